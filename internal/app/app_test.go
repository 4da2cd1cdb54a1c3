package app

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/duplex-cdc/duplex/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestSortedSystems(t *testing.T) {
	cfg := &config.Config{Systems: map[string]*config.SystemConfig{"erp": {}, "crm": {}, "billing": {}}}
	if got, want := sortedSystems(cfg), []string{"billing", "crm", "erp"}; !slices.Equal(got, want) {
		t.Errorf("sortedSystems = %v, want %v", got, want)
	}
}

// TestGroup_GoWhileWaiting: goroutines submitted while the group is being
// waited for either run and are waited for, or are refused; never added
// to a WaitGroup that is being waited on (run with -race).
func TestGroup_GoWhileWaiting(t *testing.T) {
	for range 50 {
		g := &group{}
		ctx, cancel := context.WithCancel(context.Background())
		g.Go(func() error { <-ctx.Done(); return errors.New("first") })
		var submitters sync.WaitGroup
		for range 8 {
			submitters.Go(func() {
				g.Go(func() error {
					<-ctx.Done()
					return nil
				})
			})
		}
		cancel()
		err := g.Wait()
		submitters.Wait()
		if err == nil || err.Error() != "first" {
			t.Fatalf("Wait = %v, want the error of the first goroutine", err)
		}
		if g.Go(func() error { t.Error("ran after Wait"); return nil }) {
			t.Fatal("Go after Wait = true, want false")
		}
	}
}

// TestFlowRunner_StartAfterWait: a runner started in a group that is
// being waited for does not run, and its done channel is closed so that
// a Replay waiting for it does not hang.
func TestFlowRunner_StartAfterWait(t *testing.T) {
	g := &group{}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	r := &flowRunner{}
	if r.start(context.Background(), g) {
		t.Fatal("start after Wait = true, want false")
	}
	select {
	case <-r.done:
	case <-time.After(time.Second):
		t.Fatal("done not closed")
	}
}
