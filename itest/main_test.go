//go:build integration

package itest

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The reaper image cannot be pulled here; every test removes its own
	// containers and networks in t.Cleanup.
	os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	if err := RequireImage(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
