// Package fsutil holds the durable file operations that ccm's installs and
// mirrors share: a synced copy, a directory sync and the one atomic,
// durable replacement of a file (WriteAtomic).
package fsutil

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Modes of the databases, files and directories ccm creates under the data
// and replica paths: shared with the group of the backend's user (the data
// daemons run with it as their group and umask 0007), who writes the
// database and the storage files installed from a shadow. A stricter umask
// narrows what os.OpenFile and os.MkdirAll create.
const (
	DataFile fs.FileMode = 0o660
	DataDir  fs.FileMode = 0o770
)

// CopyFile copies src to dst (created or truncated with perm) and fsyncs it.
func CopyFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// SyncDir fsyncs a directory, making renames in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// WriteAtomic replaces path durably with what write writes to a
// temporary file beside it (path + ".tmp"): the file gets mode perm, is
// fsynced, renamed over path, then its directory synced. On any error
// path is left as it was and the temporary file removed.
func WriteAtomic(path string, perm fs.FileMode, write func(f *os.File) error) error {
	return Replace(path, ReplaceOptions{Perm: perm}, write)
}

// ReplaceOptions adjust WriteAtomic.
type ReplaceOptions struct {
	Perm fs.FileMode
	// TempPrefix, if set, names the temporary file os.CreateTemp-style
	// (for trees whose readers skip files so named); otherwise it is
	// path + ".tmp".
	TempPrefix string
	// Finish, if set, runs on the temporary file after it is synced and
	// closed, before the rename (to set its times, say).
	Finish func(tmp string) error
}

// Replace is WriteAtomic with options.
func Replace(path string, o ReplaceOptions, write func(f *os.File) error) error {
	var f *os.File
	var err error
	if o.TempPrefix != "" {
		f, err = os.CreateTemp(filepath.Dir(path), o.TempPrefix)
	} else {
		f, err = os.OpenFile(path+".tmp", os.O_RDWR|os.O_CREATE|os.O_TRUNC, o.Perm)
	}
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after the rename: nothing there
	// The mode asked, not narrowed by the umask nor left from an earlier try.
	if err := f.Chmod(o.Perm); err != nil {
		f.Close()
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if o.Finish != nil {
		if err := o.Finish(tmp); err != nil {
			return err
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// WriteFileSync replaces path with data durably (WriteAtomic).
func WriteFileSync(path string, data []byte, perm fs.FileMode) error {
	return WriteAtomic(path, perm, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// OwnTree gives everything under dir the owner and group of dir itself:
// the CLI run as root (ccm join) writes where a daemon of another user
// works. It does nothing for a process that is not root, or if dir does
// not exist.
func OwnTree(dir string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("owner of %s: no ownership on this system", dir)
	}
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, int(sys.Uid), int(sys.Gid)); err != nil {
			return fmt.Errorf("give %s the owner of %s: %w", path, dir, err)
		}
		return nil
	})
}
