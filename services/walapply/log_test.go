package walapply_test

import (
	"io"
	"log/slog"
	"os"
)

func testLog() *slog.Logger {
	if os.Getenv("CCM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
