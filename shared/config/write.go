package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/convex-cluster-manager/ccm/shared/fsutil"
)

// ErrExists is returned by Write when the file exists and force is false.
var ErrExists = errors.New("config file exists")

// Write validates c and writes it as indented JSON to path, atomically
// (temporary file, fsync, rename). It refuses to replace an existing file
// unless force is set.
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
	return nil
}
