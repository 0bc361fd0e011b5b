package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// ErrExists is returned by Write when the file exists and force is false.
var ErrExists = errors.New("config file exists")

// Group is the group of the daemons that run as the unprivileged user ccm
// (ccm-elector, ccm-vip): the configuration is readable by it.
const Group = "ccm"

// Write validates c and writes it as indented JSON to path, atomically
// (temporary file, fsync, rename), mode 0640, its group Group when that
// group exists and the caller may give it. It refuses to replace an
// existing file unless force is set.
func Write(path string, c Config, force bool) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if _, err := os.Stat(path); err == nil && !force {
		return fmt.Errorf("%w: %s (use --force to overwrite)", ErrExists, path)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	err = fsutil.WriteAtomic(path, 0o640, func(f *os.File) error {
		_, err := f.Write(append(b, '\n'))
		return err
	})
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return shareWithGroup(path)
}

// shareWithGroup gives path to Group, if it exists and this process runs
// as root (an unprivileged caller keeps its own group).
func shareWithGroup(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	g, err := user.LookupGroup(Group)
	if err != nil {
		return nil // no such group: nothing runs as ccm here
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return fmt.Errorf("group %s: gid %q: %w", Group, g.Gid, err)
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("give %s to group %s: %w", path, Group, err)
	}
	return nil
}
