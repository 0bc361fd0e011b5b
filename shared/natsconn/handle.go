package natsconn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/micro"
)

// Codes maps an endpoint's errors, matched with errors.Is, to the codes of
// their replies. An error it does not match is answered with CodeFailed.
type Codes map[error]string

// codedError is an error with the code of its reply chosen where it arose.
type codedError struct {
	code string
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// WithCode makes err answered with code, whatever the endpoint's Codes say.
func WithCode(code string, err error) error { return &codedError{code: code, err: err} }

// Handle turns fn, an endpoint's work, into its micro handler: fn runs with
// a context bounded by timeout (none if zero); its result is the reply's
// JSON body ({} for nil), and its error an error reply whose code is the
// one WithCode gave it, else the one codes maps it to, else CodeFailed.
func Handle(timeout time.Duration, codes Codes, fn func(ctx context.Context, req micro.Request) (any, error)) micro.HandlerFunc {
	return func(req micro.Request) {
		ctx := context.Background()
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		v, err := fn(ctx, req)
		if err != nil {
			_ = req.Error(codeOf(err, codes), err.Error(), nil)
			return
		}
		body := []byte("{}")
		if v != nil {
			if body, err = json.Marshal(v); err != nil {
				_ = req.Error(CodeFailed, "encode reply: "+err.Error(), nil)
				return
			}
		}
		_ = req.Respond(body)
	}
}

func codeOf(err error, codes Codes) string {
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	for target, code := range codes {
		if errors.Is(err, target) {
			return code
		}
	}
	return CodeFailed
}

// Decode reads a request's JSON body into v; an empty body leaves v as it
// is. A body that cannot be read is a CodeBadRequest error naming it.
func Decode(req micro.Request, v any) error {
	if len(req.Data()) == 0 {
		return nil
	}
	if err := json.Unmarshal(req.Data(), v); err != nil {
		return WithCode(CodeBadRequest, fmt.Errorf("invalid request %q: %w", req.Data(), err))
	}
	return nil
}
