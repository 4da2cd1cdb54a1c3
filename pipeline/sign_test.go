package pipeline_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/duplex-cdc/duplex/capture"
	"github.com/duplex-cdc/duplex/pipeline"
	"github.com/duplex-cdc/duplex/transform"
)

func newKey(t *testing.T) (seed []byte, pub string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ = kp.Seed()
	pub, _ = kp.PublicKey()
	return seed, pub
}

// TestSigner_SameSignatureAsNkeys: the Signer (crypto/ed25519 with the
// key derived once) signs exactly as the nkey itself does, so a signature
// checks with nkeys' own Verify.
func TestSigner_SameSignatureAsNkeys(t *testing.T) {
	seed, pub := newKey(t)
	signer, err := pipeline.NewSigner("crm", seed)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg("duplex.crm.tx")
	msg.Data = []byte(`{"v":1}`)
	if err := signer.Sign(msg, "crm:0/1:0"); err != nil {
		t.Fatal(err)
	}
	key, sig64, _ := strings.Cut(msg.Header.Get(pipeline.SignatureHeader), ".")
	if key != pub {
		t.Fatalf("signed by %s, want %s", key, pub)
	}
	sig, err := base64.RawURLEncoding.DecodeString(sig64)
	if err != nil {
		t.Fatal(err)
	}
	kp, _ := nkeys.FromSeed(seed)
	want, _ := kp.Sign([]byte("duplex-signature-v1\x00crm\x00duplex.crm.tx\x00crm:0/1:0\x00{\"v\":1}"))
	if string(sig) != string(want) {
		pk, _ := nkeys.FromPublicKey(pub)
		t.Fatalf("signature differs from the nkey's (nkeys verifies it: %v)", pk.Verify([]byte("x"), sig))
	}
}

func TestVerifier_Verify(t *testing.T) {
	seed, pub := newKey(t)
	seed2, pub2 := newKey(t)
	other, _ := newKey(t)
	signer, err := pipeline.NewSigner("crm", seed)
	if err != nil {
		t.Fatal(err)
	}
	signer2, _ := pipeline.NewSigner("crm", seed2)
	stranger, _ := pipeline.NewSigner("crm", other)
	erpSigner, _ := pipeline.NewSigner("erp", seed)
	v, err := pipeline.NewVerifier("crm", []string{pub, pub2})
	if err != nil {
		t.Fatal(err)
	}
	signed := func(s *pipeline.Signer, subject, id, body string) *nats.Msg {
		m := nats.NewMsg(subject)
		m.Data = []byte(body)
		if s != nil {
			if err := s.Sign(m, id); err != nil {
				t.Fatal(err)
			}
		}
		m.Header.Set(nats.MsgIdHdr, id)
		return m
	}
	tests := []struct {
		name    string
		msg     func() *nats.Msg
		wantErr string
	}{
		{"signed", func() *nats.Msg { return signed(signer, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`) }, ""},
		{"rotated key", func() *nats.Msg { return signed(signer2, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`) }, ""},
		{"unsigned", func() *nats.Msg { return signed(nil, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`) }, "unsigned"},
		{"untrusted key", func() *nats.Msg { return signed(stranger, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`) }, "unknown key"},
		{"signed for another source", func() *nats.Msg { return signed(erpSigner, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`) }, "bad signature"},
		{"body changed", func() *nats.Msg {
			m := signed(signer, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`)
			m.Data = []byte(`{"v":2}`)
			return m
		}, "bad signature"},
		{"message id changed", func() *nats.Msg {
			m := signed(signer, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`)
			m.Header.Set(nats.MsgIdHdr, "crm:FFFFFFFF/FFFFFFF0:0")
			return m
		}, "bad signature"},
		{"subject changed", func() *nats.Msg {
			m := signed(signer, "duplex.erp.tx", "crm:0/10:0", `{"v":1}`)
			m.Subject = "duplex.crm.tx"
			return m
		}, "bad signature"},
		{"garbage header", func() *nats.Msg {
			m := signed(nil, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`)
			m.Header.Set(pipeline.SignatureHeader, "nonsense")
			return m
		}, "bad signature"},
		{"bad base64", func() *nats.Msg {
			m := signed(nil, "duplex.crm.tx", "crm:0/10:0", `{"v":1}`)
			m.Header.Set(pipeline.SignatureHeader, pub+".!!!")
			return m
		}, "bad signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.msg()
			err := v.Verify(m.Subject, m.Header, m.Data)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Verify = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "("+tt.wantErr+")") || !pipeline.IsSignatureError(err) {
				t.Fatalf("Verify = %v, want a signature error (%s)", err, tt.wantErr)
			}
		})
	}
}

func TestNewVerifier_RefusesWhatIsNotAPublicKey(t *testing.T) {
	seed, _ := newKey(t)
	for _, keys := range [][]string{nil, {"nonsense"}, {string(seed)}} {
		if _, err := pipeline.NewVerifier("crm", keys); err == nil {
			t.Errorf("NewVerifier(%q) = nil error", keys)
		}
	}
	if _, err := pipeline.NewSigner("crm", []byte("nonsense")); err == nil {
		t.Error("NewSigner(nonsense) = nil error")
	}
}

// TestApplier_RefusesUnsignedAndAppliesSigned: a capture signs what it
// publishes; a message published without a signature (or with a
// signature that does not match) between its transactions is
// dead-lettered, counted, and applies nothing, and the signed
// transactions around it are applied.
func TestApplier_RefusesUnsignedAndAppliesSigned(t *testing.T) {
	js, m := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	seed, pub := newKey(t)
	signer, _ := pipeline.NewSigner("crm", seed)
	verifier, _ := pipeline.NewVerifier("crm", []string{pub})
	publish := func(lsn capture.LSN, prev capture.LSN, s *pipeline.Signer, tamper bool) {
		tx := transform.Tx{Version: 1, Source: "crm", CommitLSN: lsn, EndLSN: lsn + 1, CommitTime: time.Now().UTC(), Last: true, PrevLSN: prev}
		b, _ := json.Marshal(&tx)
		msg := nats.NewMsg(pipeline.Subject("crm"))
		msg.Data = b
		if s != nil {
			if err := s.Sign(msg, tx.MsgID()); err != nil {
				t.Fatal(err)
			}
		}
		id := tx.MsgID()
		if tamper {
			tx.CommitLSN = 0xFFFFFFFFFFFFFFF0
			msg.Data, _ = json.Marshal(&tx)
		}
		if _, err := js.PublishMsg(ctx, msg, jetstreamMsgID(id)); err != nil {
			t.Fatal(err)
		}
	}
	publish(100, 0, signer, false)
	publish(0xFFFFFFFFFFFFFFF0, 100, nil, false) // unsigned: a forged applied position
	publish(150, 100, signer, true)              // signed, then changed
	publish(200, 100, signer, false)
	publish(300, 200, signer, false)
	sink := &lsnSink{}
	stats := &pipeline.FlowStats{}
	a, err := pipeline.NewApplier(js, pipeline.ApplierConfig{Flow: "to-erp", Source: "crm", Sink: sink, MaxWait: time.Minute, Verify: verifier, Stats: stats, Mapping: m, Target: "erp"})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(rctx) }()
	for ctx.Err() == nil {
		if applied, _ := sink.result(); len(applied) >= 3 && stats.Snapshot().DeadLetters >= 2 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	applied, skipped := sink.result()
	if len(applied) != 3 || applied[0] != 100 || applied[1] != 200 || applied[2] != 300 || len(skipped) != 0 {
		t.Errorf("applied %v, skipped %v; want 0/64, 0/C8, 0/12C applied and nothing skipped", applied, skipped)
	}
	c := stats.Snapshot()
	if c.Refused["unsigned"] != 1 || c.Refused["bad signature"] != 1 {
		t.Errorf("refused = %v, want one unsigned and one bad signature", c.Refused)
	}
	dls, err := pipeline.ListDeadLetters(ctx, js, "to-erp", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 || !strings.Contains(dls[0].Error, "unsigned") || !strings.Contains(dls[1].Error, "bad signature") || dls[0].StreamSeq != 2 || dls[1].StreamSeq != 3 {
		t.Fatalf("dead letters = %+v, want the unsigned message (seq 2) and the changed one (seq 3)", dls)
	}
}

// TestApplier_IncompleteTransactionGivenUpAfterMaxWait: the first chunk
// of transaction 150 comes, its last never does; its successor 200 names
// it as PrevLSN. After max_wait the flow dead-letters 150's events and a
// record naming it, and applies 200 (before, the flow waited for ever).
func TestApplier_IncompleteTransactionGivenUpAfterMaxWait(t *testing.T) {
	js, _ := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ev := transform.Event{Version: 1, ID: "crm:0/96:0", Source: "crm", Entity: "customer", Op: transform.OpUpsert, Key: "0d3f5a8e-1111-4c59-9d1b-2d7b6c1f0b01"}
	txs := []transform.Tx{
		{Version: 1, Source: "crm", CommitLSN: 100, EndLSN: 101, Last: true},
		{Version: 1, Source: "crm", CommitLSN: 150, EndLSN: 151, Chunk: 0, PrevLSN: 100, Events: []transform.Event{ev}},
		{Version: 1, Source: "crm", CommitLSN: 200, EndLSN: 201, Last: true, PrevLSN: 150},
	}
	for _, tx := range txs {
		b, _ := json.Marshal(&tx)
		msg := nats.NewMsg(pipeline.Subject("crm"))
		msg.Data = b
		if _, err := js.PublishMsg(ctx, msg, jetstreamMsgID(tx.MsgID())); err != nil {
			t.Fatal(err)
		}
	}
	sink := &lsnSink{}
	start := time.Now()
	runUntil(ctx, t, js, sink, 2*time.Second, 2)
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("the flow applied past the incomplete transaction after %s, before max_wait (2s)", took)
	}
	applied, skipped := sink.result()
	if len(applied) != 2 || applied[0] != 100 || applied[1] != 200 || len(skipped) != 0 {
		t.Fatalf("applied %v, skipped %v; want 0/64 and 0/C8", applied, skipped)
	}
	dls, err := pipeline.ListDeadLetters(ctx, js, "to-erp", 10)
	if err != nil {
		t.Fatal(err)
	}
	var event, record bool
	for _, d := range dls {
		event = event || d.Event != nil && d.Event.ID == ev.ID && strings.Contains(d.Error, "max_wait")
		record = record || d.Event == nil && strings.Contains(d.Error, "0/96") && strings.Contains(d.Error, "not its last")
	}
	if !event || !record {
		t.Fatalf("dead letters = %+v, want the event of 0/96 and a record naming the incomplete transaction", dls)
	}
}

func jetstreamMsgID(id string) jetstream.PublishOpt { return jetstream.WithMsgID(id) }
