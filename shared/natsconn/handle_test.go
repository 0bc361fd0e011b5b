package natsconn_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/require"

	"github.com/convex-cluster-manager/ccm/shared/natsconn"
	"github.com/convex-cluster-manager/ccm/shared/natstest"
	"github.com/convex-cluster-manager/ccm/shared/schema"
)

var errBusy = errors.New("busy")

// TestHandleAnswersCall: an endpoint built with Handle answers Call with
// its JSON reply, or with the code its error is given (WithCode first, then
// the endpoint's Codes, then CodeFailed), and a bad body with CodeBadRequest
// naming the body; its context ends at the endpoint's timeout.
func TestHandleAnswersCall(t *testing.T) {
	nc := natstest.Connect(t, natstest.Server(t).ClientURL())
	svc, err := micro.AddService(nc, micro.Config{Name: "handle-test", Version: "0.0.1"})
	require.NoError(t, err)
	defer svc.Stop()
	g := svc.AddGroup(schema.EndpointGroup("c", "n1", "test"))
	codes := natsconn.Codes{errBusy: natsconn.CodeRefused}
	require.NoError(t, g.AddEndpoint("echo", natsconn.Handle(0, codes, func(_ context.Context, req micro.Request) (any, error) {
		var r schema.EpochRequest
		if err := natsconn.Decode(req, &r); err != nil {
			return nil, err
		}
		switch r.Epoch {
		case 0:
			return nil, nil
		case 1:
			return nil, fmt.Errorf("epoch 1: %w", errBusy)
		case 2:
			return nil, natsconn.WithCode(natsconn.CodeNotFound, fmt.Errorf("epoch 2: %w", errBusy))
		case 3:
			return nil, errors.New("epoch 3 failed")
		}
		return r, nil
	})))
	require.NoError(t, g.AddEndpoint("slow", natsconn.Handle(100*time.Millisecond, nil, func(ctx context.Context, _ micro.Request) (any, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})))

	ctx := context.Background()
	call := func(verb string, body any) ([]byte, error) {
		return natsconn.Call(ctx, nc, "c", "n1", "test", verb, body, 5*time.Second)
	}
	got, err := natsconn.CallJSON[schema.EpochRequest](ctx, nc, "c", "n1", "test", "echo", schema.EpochRequest{Epoch: 7}, 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, uint64(7), got.Epoch)

	b, err := call("echo", nil)
	require.NoError(t, err)
	require.JSONEq(t, `{}`, string(b), "a nil reply is an empty object")

	for epoch, want := range map[uint64]string{1: natsconn.CodeRefused, 2: natsconn.CodeNotFound, 3: natsconn.CodeFailed} {
		_, err := call("echo", schema.EpochRequest{Epoch: epoch})
		require.Truef(t, natsconn.HasCode(err, want), "epoch %d: got %v, want code %s", epoch, err, want)
		require.ErrorContains(t, err, fmt.Sprintf("epoch %d", epoch))
	}

	msg, err := nc.Request(schema.Endpoint("c", "n1", "test", "echo"), []byte("{epoch"), 5*time.Second)
	require.NoError(t, err)
	require.Equal(t, natsconn.CodeBadRequest, msg.Header.Get(micro.ErrorCodeHeader))
	require.Contains(t, msg.Header.Get(micro.ErrorHeader), `"{epoch"`, "the error names the bad body")

	_, err = call("slow", nil)
	require.True(t, natsconn.HasCode(err, natsconn.CodeFailed), "got %v", err)
	require.ErrorContains(t, err, context.DeadlineExceeded.Error())

	_, err = call("missing", nil)
	require.ErrorIs(t, err, natsconn.ErrNotRunning)
}
