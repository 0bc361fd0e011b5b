package storage

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestNotifierReportsChanges drives the recursive inotify watcher with
// real file operations: each must be reported with its relative path, new
// directories as directories (the caller watches them), and what it
// cannot follow (a directory moved away, the root gone) as a reconcile.
func TestNotifierReportsChanges(t *testing.T) {
	root := t.TempDir()
	n, err := newNotifier(root)
	require.NoError(t, err)
	require.NoError(t, n.watchTree(""))
	events := make(chan event, 256)
	done := make(chan error, 1)
	go func() { done <- n.read(func(e event) { events <- e }) }()
	expect := func(want event) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case e := <-events:
				if e == want {
					return
				}
			case <-deadline:
				t.Fatalf("no event %+v within 5 s", want)
			}
		}
	}
	at := func(rel string) string { return filepath.Join(root, rel) }

	os.WriteFile(at("a"), []byte("a"), 0o644)
	expect(event{path: "a"})
	os.Chmod(at("a"), 0o600)
	expect(event{path: "a"})

	os.Mkdir(at("d"), 0o755)
	expect(event{path: "d", dir: true})
	if err := n.watchTree("d"); err != nil { // as the capture does on a directory event
		t.Fatal(err)
	}
	os.WriteFile(at("d/b"), []byte("b"), 0o644)
	expect(event{path: "d/b"})
	os.Rename(at("d/b"), at("d/c"))
	expect(event{path: "d/b"})
	expect(event{path: "d/c"})
	os.Remove(at("d/c"))
	expect(event{path: "d/c"})

	// A tree moved in arrives as one directory to walk; one moved out
	// leaves paths the watcher cannot name.
	outside := t.TempDir()
	os.MkdirAll(filepath.Join(outside, "t/u"), 0o755)
	os.Rename(filepath.Join(outside, "t"), at("t"))
	expect(event{path: "t", dir: true})
	os.Rename(at("d"), filepath.Join(outside, "d"))
	expect(event{reconcile: true})

	os.RemoveAll(root)
	expect(event{reconcile: true})

	n.close()
	select {
	case err := <-done:
		require.NoErrorf(t, err, "read after close")
	case <-time.After(5 * time.Second):
		t.Fatal("read did not return after close")
	}
}
