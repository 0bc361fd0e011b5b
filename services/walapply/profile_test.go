package walapply_test

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"
)

// profileChild starts a CPU profile of a child process when
// CCM_CHILD_PROFILE names a directory: name.cpu.pprof and name.heap.pprof
// are written there when the child gets SIGTERM (see child.stop).
func profileChild(name string) {
	dir := os.Getenv("CCM_CHILD_PROFILE")
	if dir == "" {
		return
	}
	f, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	go peakHeap(filepath.Join(dir, name+".peak.pprof"))
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		pprof.StopCPUProfile()
		f.Close()
		if h, err := os.Create(filepath.Join(dir, name+".heap.pprof")); err == nil {
			pprof.Lookup("allocs").WriteTo(h, 0)
			h.Close()
		}
		os.Exit(0)
	}()
}

// peakHeap writes a heap profile to path each time the heap in use
// reaches a new high (checked every 50 ms).
func peakHeap(path string) {
	var high uint64
	for range time.Tick(50 * time.Millisecond) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse <= high+(1<<20) {
			continue
		}
		high = ms.HeapInuse
		if f, err := os.Create(path); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
}
