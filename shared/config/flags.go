package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/peterbourgon/ff/v3"
)

// ErrNoFile is returned when a configuration file named explicitly cannot be read.
var ErrNoFile = errors.New("config file not readable")

// Flags binds every setting of a Config, plus -config, to a flag set.
type Flags struct {
	cfg  Config
	path string
	fs   *flag.FlagSet
}

// Bind registers -config and one flag per setting (defaults from Default) on fs.
func Bind(fs *flag.FlagSet) *Flags {
	f := &Flags{cfg: Default(), fs: fs}
	fs.StringVar(&f.path, "config", DefaultPath, "JSON configuration file (env CCM_CONFIG)")
	f.register(fs)
	return f
}

// BindSettings registers one flag per setting, without -config; for commands
// that write a configuration rather than read one.
func BindSettings(fs *flag.FlagSet) *Flags {
	f := &Flags{cfg: Default(), fs: fs}
	f.register(fs)
	return f
}

func (f *Flags) register(fs *flag.FlagSet) {
	for _, fd := range f.cfg.fields() {
		switch {
		case fd.str != nil:
			fs.StringVar(fd.str, fd.flagName(), *fd.str, fd.usage)
		case fd.num != nil:
			fs.IntVar(fd.num, fd.flagName(), *fd.num, fd.usage)
		case fd.list != nil:
			fs.Var(&listValue{p: fd.list}, fd.flagName(), fd.usage)
		}
	}
}

// Path is the configuration file named by -config.
func (f *Flags) Path() string { return f.path }

// Config returns the settings as parsed, without validating them.
func (f *Flags) Config() Config { return f.cfg }

// ParseOptions are the ff options for a flag set made by Bind: flags win over
// CCM_* environment variables, which win over the JSON file.
func ParseOptions() []ff.Option {
	return []ff.Option{
		ff.WithEnvVarPrefix(EnvPrefix),
		ff.WithConfigFileFlag("config"),
		ff.WithConfigFileParser(ParseJSON),
		ff.WithAllowMissingConfigFile(true),
	}
}

// Parse parses args and the environment into the flag set, reads the JSON
// file and returns the validated configuration. The default file may be
// missing; a file named explicitly must exist.
func (f *Flags) Parse(args []string) (Config, error) {
	if err := ff.Parse(f.fs, args, ParseOptions()...); err != nil {
		return Config{}, err
	}
	return f.Loaded()
}

// Loaded checks the result of an ff parse done elsewhere (ffcli): the
// explicit file exists and the settings are valid.
func (f *Flags) Loaded() (Config, error) {
	if f.path != "" && f.path != DefaultPath {
		if _, err := os.Stat(f.path); err != nil {
			return Config{}, fmt.Errorf("%w: %w", ErrNoFile, err)
		}
	}
	if err := f.cfg.Validate(); err != nil {
		return Config{}, err
	}
	return f.cfg, nil
}

// ParseJSON is an ff.ConfigFileParser for the cluster.json schema. It rejects
// unknown fields and values of the wrong JSON type, naming the field path.
func ParseJSON(r io.Reader, set func(name, value string) error) error {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("config file: invalid JSON: %w", err)
	}
	if dec.More() {
		return errors.New("config file: trailing data after the JSON object")
	}
	var c Config
	byPath := map[string]field{}
	for _, fd := range c.fields() {
		byPath[fd.path] = fd
	}
	return walk("", doc, byPath, set)
}

func walk(prefix string, obj map[string]any, byPath map[string]field, set func(name, value string) error) error {
	for k, v := range obj {
		path := k
		if prefix != "" {
			path = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			if !isSection(path, byPath) {
				return fmt.Errorf("config file: unknown field %q (%s)", path, known(prefix, byPath))
			}
			if err := walk(path, sub, byPath, set); err != nil {
				return err
			}
			continue
		}
		fd, ok := byPath[path]
		if !ok {
			return fmt.Errorf("config file: unknown field %q (%s)", path, known(prefix, byPath))
		}
		values, err := jsonValues(fd, v)
		if err != nil {
			return fmt.Errorf("config file: %s: %w", path, err)
		}
		for _, s := range values {
			if err := set(fd.flagName(), s); err != nil {
				return fmt.Errorf("config file: %s: %w", path, err)
			}
		}
	}
	return nil
}

// jsonValues converts a JSON leaf to the flag values for fd, checking its type.
func jsonValues(fd field, v any) ([]string, error) {
	switch {
	case fd.str != nil:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("%s is not a string", describe(v))
		}
		return []string{s}, nil
	case fd.num != nil:
		n, ok := v.(json.Number)
		if !ok {
			return nil, fmt.Errorf("%s is not a number", describe(v))
		}
		if _, err := n.Int64(); err != nil {
			return nil, fmt.Errorf("%s is not a whole number", n)
		}
		return []string{n.String()}, nil
	default:
		arr, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("%s is not an array of strings", describe(v))
		}
		out := []string{resetList}
		for i, e := range arr {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("element %d: %s is not a string", i, describe(e))
			}
			out = append(out, s)
		}
		return out, nil
	}
}

func describe(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func isSection(path string, byPath map[string]field) bool {
	for p := range byPath {
		if strings.HasPrefix(p, path+".") {
			return true
		}
	}
	return false
}

// known lists the valid field names directly under prefix.
func known(prefix string, byPath map[string]field) string {
	seen := map[string]bool{}
	var names []string
	var c Config
	for _, fd := range c.fields() {
		rest := fd.path
		if prefix != "" {
			if !strings.HasPrefix(rest, prefix+".") {
				continue
			}
			rest = strings.TrimPrefix(rest, prefix+".")
		}
		name, _, _ := strings.Cut(rest, ".")
		if !seen[name] {
			seen[name] = true
			names = append(names, name)
		}
	}
	where := "top level"
	if prefix != "" {
		where = fmt.Sprintf("%q", prefix)
	}
	return fmt.Sprintf("valid in %s: %s", where, strings.Join(names, ", "))
}

// resetList is the value the JSON parser sets first on a list flag so that
// the file's array replaces the default instead of extending it.
const resetList = "\x00reset"

// listValue is a flag.Value for a list of strings given comma-separated; the
// first Set replaces the default.
type listValue struct {
	p   *[]string
	set bool
}

func (l *listValue) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l *listValue) Set(s string) error {
	if s == resetList {
		*l.p, l.set = nil, true
		return nil
	}
	if !l.set {
		*l.p, l.set = nil, true
	}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l.p = append(*l.p, part)
		}
	}
	return nil
}

// IsSetting reports whether name is the flag of a configuration setting
// (or -config) that Bind registers, as opposed to a command's own flag.
func IsSetting(name string) bool {
	if name == "config" {
		return true
	}
	var c Config
	for _, fd := range c.fields() {
		if fd.flagName() == name {
			return true
		}
	}
	return false
}
