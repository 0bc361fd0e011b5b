// Package buildinfo is the build's version, shared by the daemons and the
// ccm CLI (which must not link the daemon runtime).
package buildinfo

import (
	"regexp"
	"runtime/debug"
	"strings"
)

// version is set at link time by the Makefile (-X ...buildinfo.version=1.2.3).
var version = ""

var semver = regexp.MustCompile(`^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// Version returns the semantic version of this build, as micro requires:
// the link-time version, else the module version, else 0.0.0-dev with the
// VCS revision as build metadata.
func Version() string {
	if v := strings.TrimPrefix(version, "v"); semver.MatchString(v) {
		return v
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "0.0.0-dev"
	}
	if v := strings.TrimPrefix(bi.Main.Version, "v"); semver.MatchString(v) {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "0.0.0-dev+" + s.Value[:12]
		}
	}
	return "0.0.0-dev"
}
