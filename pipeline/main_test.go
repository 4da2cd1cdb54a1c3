package pipeline

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine outlives them.
//
// One goroutine of nats.go is not counted: resetPendingAcksOnReconnect,
// which its first asynchronous publish starts and which reads the
// publisher's status channel when it first runs. The object store's Put
// publishes asynchronously through a JetStream context of its own and
// clears that channel (cleanupReplySub) when it returns; a small object
// is stored before the goroutine has run, which then waits on a nil
// channel forever (nats.go v1.55.0, jetstream/publish.go and object.go).
// Seen once in a run of the whole suite (race detector): one parked
// goroutine per such Put, not something duplex starts or could stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect"))
}
