package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress reports a transfer of total bytes: a redrawn bar on a terminal,
// a plain line about every second otherwise.
type progress struct {
	w        io.Writer
	tty      bool
	label    string
	total    int64
	start    time.Time
	lastLine time.Time
}

func newProgress(w io.Writer, label string, total int64) *progress {
	return &progress{w: w, tty: isTerminal(w), label: label, total: total, start: time.Now()}
}

// isTerminal reports whether w is a terminal (not a pipe or a file).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (p *progress) update(done int64) {
	now := time.Now()
	if !p.tty && now.Sub(p.lastLine) < time.Second && done < p.total {
		return
	}
	p.lastLine = now
	elapsed := now.Sub(p.start).Seconds()
	rate := float64(done) / max(elapsed, 1e-3)
	eta := "-"
	if rate > 0 && p.total > 0 {
		eta = time.Duration(float64(p.total-done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(done) / float64(p.total)
	}
	stats := fmt.Sprintf("%s / %s (%.0f%%) %s/s ETA %s", mib(done), mib(p.total), pct, mib(int64(rate)), eta)
	if p.tty {
		const width = 30
		fill := int(pct / 100 * width)
		fmt.Fprintf(p.w, "\r%s [%s%s] %s ", p.label, strings.Repeat("#", fill), strings.Repeat(".", width-fill), stats)
		return
	}
	fmt.Fprintf(p.w, "%s: %s\n", p.label, stats)
}

// finish prints the summary line and returns the mean rate in bytes/s.
func (p *progress) finish(done int64) float64 {
	p.update(done)
	elapsed := time.Since(p.start)
	rate := float64(done) / max(elapsed.Seconds(), 1e-3)
	if p.tty {
		fmt.Fprintln(p.w)
	}
	fmt.Fprintf(p.w, "%s: %s in %s (%s/s)\n", p.label, mib(done), elapsed.Round(time.Millisecond), mib(int64(rate)))
	return rate
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
