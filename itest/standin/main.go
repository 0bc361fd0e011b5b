// Command standin is a test fixture that behaves like the Convex backend
// in the respects ccm depends on: it opens its SQLite database with no
// pragmas, keeps files under storage/ beside it, opens its HTTP port only
// once loaded (after -start-delay), answers GET /version, drains on SIGINT
// and dies at once on SIGTERM. It adds a small API for tests to count
// acknowledged and surviving writes:
//
//	POST /write?v=X  commits a row, answers its id once committed
//	GET  /count      number of rows
//	GET  /ids        every row id, one per line
//	GET  /values     every row's value, one per line
//	GET  /storage?f=PATH  the content of storage/PATH
//	POST /storage?f=PATH  stores the body as storage/PATH (a file upload)
//
// It is not shipped as a product binary.
package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	_ "modernc.org/sqlite"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "standin:", err)
		os.Exit(1)
	}
}

// hangFile, while it exists, makes GET /version hang until the client
// gives up.
const hangFile = "/etc/convex/standin.hang"

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("standin", flag.ContinueOnError)
	data := fs.String("data", "/var/lib/convex/data", "data directory")
	dbFile := fs.String("db-file", "db.sqlite3", "database file in the data directory")
	addr := fs.String("addr", ":3210", "HTTP listen address")
	delay := fs.Duration("start-delay", 0, "time to 'load' before the port opens")
	crash := fs.Bool("crash", false, "exit with an error right after start (crash loop)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if *crash || os.Getenv("STANDIN_CRASH") != "" {
		return errors.New("crashing as asked")
	}
	// SIGTERM kills at once, like the real backend; SIGINT drains.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		log.Warn("SIGTERM: exiting at once")
		os.Exit(143)
	}()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	db, err := sql.Open("sqlite", filepath.Join(*data, *dbFile))
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := exec(ctx, db, `CREATE TABLE IF NOT EXISTS writes (id INTEGER PRIMARY KEY, v TEXT, at INTEGER)`); err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	if _, err := exec(ctx, db, `CREATE INDEX IF NOT EXISTS writes_v ON writes (v)`); err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	if _, err := exec(ctx, db, `CREATE TABLE IF NOT EXISTS uploads (id INTEGER PRIMARY KEY, path TEXT, sha256 TEXT)`); err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	// Files and directories with the default modes, narrowed by the
	// unit's umask, as the real backend (Rust's defaults) creates them: its
	// group, which ccm's data daemons share, may write what a passive
	// mirrored when it takes over.
	storage := filepath.Join(*data, "storage", "modules")
	if err := os.MkdirAll(storage, 0o777); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(storage, "standin.js"), []byte("export default 1;\n"), 0o666); err != nil {
		return err
	}
	log.Info("loading", "delay", *delay)
	select {
	case <-time.After(*delay):
	case <-ctx.Done():
		return nil
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, r *http.Request) {
		// A test makes health checks hang (a stuck backend) with this file.
		if _, err := os.Stat(hangFile); err == nil {
			<-r.Context().Done()
			return
		}
		fmt.Fprint(w, "standin-1.0")
	})
	mux.HandleFunc("GET /instance_name", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "standin") })
	mux.HandleFunc("POST /write", func(w http.ResponseWriter, r *http.Request) {
		res, err := exec(r.Context(), db, `INSERT INTO writes (v, at) VALUES (?, ?)`, r.URL.Query().Get("v"), time.Now().UnixNano())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		id, _ := res.LastInsertId()
		fmt.Fprint(w, id)
	})
	// has answers 1 if a row holds value v, else 0.
	mux.HandleFunc("GET /has", func(w http.ResponseWriter, r *http.Request) {
		var n int
		if err := db.QueryRowContext(r.Context(), `SELECT count(*) FROM writes WHERE v = ?`, r.URL.Query().Get("v")).Scan(&n); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, min(n, 1))
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		var n int
		if err := db.QueryRowContext(r.Context(), `SELECT count(*) FROM writes`).Scan(&n); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, n)
	})
	// list writes one column of every row, one per line, in id order.
	list := func(col string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			rows, err := db.QueryContext(r.Context(), `SELECT `+col+` FROM writes ORDER BY id`)
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			defer rows.Close()
			var b strings.Builder
			for rows.Next() {
				var v string
				rows.Scan(&v)
				fmt.Fprintln(&b, v)
			}
			io.WriteString(w, b.String())
		}
	}
	mux.HandleFunc("GET /ids", list("id"))
	mux.HandleFunc("GET /values", list("v"))
	// storage/ paths, kept inside storage/ whatever the query says.
	storagePath := func(r *http.Request) string {
		return filepath.Join(*data, "storage", filepath.Clean("/"+r.URL.Query().Get("f")))
	}
	mux.HandleFunc("GET /storage", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(storagePath(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	// An upload, as Convex does it: the file is written, then a row
	// naming it (with its SHA-256) is committed.
	mux.HandleFunc("POST /storage", func(w http.ResponseWriter, r *http.Request) {
		p := storagePath(r)
		b, err := io.ReadAll(r.Body)
		if err == nil {
			err = os.MkdirAll(filepath.Dir(p), 0o777)
		}
		if err == nil {
			err = os.WriteFile(p, b, 0o666)
		}
		if err == nil {
			rel, _ := filepath.Rel(filepath.Join(*data, "storage"), p)
			sum := sha256.Sum256(b)
			_, err = exec(r.Context(), db, `INSERT INTO uploads (path, sha256) VALUES (?, ?)`, rel, hex.EncodeToString(sum[:]))
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "%d\n", len(b))
	})
	// Every upload row whose file this node does not serve as uploaded
	// (the newest row of each path), one per line, after a count line.
	mux.HandleFunc("GET /uploads/missing", func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.QueryContext(r.Context(), `SELECT path, sha256 FROM uploads WHERE id IN (SELECT max(id) FROM uploads GROUP BY path) ORDER BY id`)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer rows.Close()
		var n int
		var missing []string
		for rows.Next() {
			var rel, want string
			rows.Scan(&rel, &want)
			n++
			b, err := os.ReadFile(filepath.Join(*data, "storage", rel))
			sum := sha256.Sum256(b)
			if got := hex.EncodeToString(sum[:]); err != nil || got != want {
				missing = append(missing, fmt.Sprintf("%s (row says %s, file: %v)", rel, want, errOr(err, got)))
			}
		}
		fmt.Fprintf(w, "%d rows, %d missing\n", n, len(missing))
		for _, m := range missing {
			fmt.Fprintln(w, m)
		}
	})
	// Every answer names the node that gave it (the chaos campaign checks
	// that no node answers outside its term).
	host, _ := os.Hostname()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Node", host)
		mux.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: *addr, Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving", "addr", *addr)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("SIGINT: draining")
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shut)
}

// exec runs a statement, retrying while the database is busy (Litestream
// holds short locks); the real backend retries too.
func exec(ctx context.Context, db *sql.DB, q string, args ...any) (sql.Result, error) {
	for {
		res, err := db.ExecContext(ctx, q, args...)
		if err == nil || !strings.Contains(err.Error(), "SQLITE_BUSY") {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func errOr(err error, v string) any {
	if err != nil {
		return err
	}
	return v
}
