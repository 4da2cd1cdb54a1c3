package pipeline

// The identities duplex connects to NATS as, and the subjects each may
// use (NATS subject permissions). Only the operator may create, update,
// purge or delete streams; a capture may only publish its own source's
// transactions; a flow may only read its own durable consumer.
//
// The JetStream API is a set of request subjects ($JS.API.…, see
// https://docs.nats.io/reference/reference-protocols/nats_api_reference):
// a client may call an API only if it may publish to its subject, and it
// receives the answer on its inbox, which it must be allowed to subscribe
// to. Each identity has an inbox prefix of its own (InboxPrefix), so that
// none can read another's answers (the messages a flow fetches among
// them). NATS does not check the reply subject a request names, so these
// permissions keep an identity from publishing a forged transaction, not
// from having JetStream publish an answer wherever it asks; only a
// message signature checked by the flow closes that (deploy/nats/README.md).

// OperatorIdentity is the identity of the streams, buckets, retention,
// leases and the command-line tools.
const OperatorIdentity = "operator"

// CaptureIdentity is the identity a source's capture publishes as.
func CaptureIdentity(source string) string { return "capture-" + source }

// FlowIdentity is the identity a flow consumes as.
func FlowIdentity(flow string) string { return "flow-" + flow }

// InboxPrefix is the inbox prefix of an identity (nats.CustomInboxPrefix):
// _INBOX.<identity>.
func InboxPrefix(identity string) string { return "_INBOX." + identity }

// Permissions are the subjects an identity may publish to and subscribe
// to (wildcards allowed), and those it may not publish to (Deny wins
// over Publish). An empty Publish or Subscribe list allows every subject.
type Permissions struct {
	Publish     []string
	DenyPublish []string
	Subscribe   []string
}

// objStream is the stream behind the large-change object store.
const objStream = "OBJ_" + LargeBucket

// readLarge are the API calls that read an object of DUPLEX_LARGE without
// a consumer: the bucket's stream info, and its messages (the object's
// meta, then its chunks one by one) by direct get, or through the stream
// leader where direct gets are off. All are reads; none lets the caller
// make JetStream publish anywhere.
var readLarge = []string{
	"$JS.API.STREAM.INFO." + objStream,
	"$JS.API.DIRECT.GET." + objStream,
	"$JS.API.DIRECT.GET." + objStream + ".>",
	"$JS.API.STREAM.MSG.GET." + objStream,
}

// CapturePermissions are what a source's capture needs: publish its
// transactions (duplex.<source>.tx) and its dead letters
// (duplex.dlq.capture-<source>), store large changes in DUPLEX_LARGE
// (chunks and meta messages; it reads an existing object's meta to reuse
// it), and receive the acknowledgements on its inbox. It cannot publish
// another source's transactions, read DUPLEX, or purge or delete
// anything. Object names are encoded into one subject token, so the
// permissions cannot keep one source's capture from writing an object
// named for another source.
func CapturePermissions(source string) Permissions {
	pub := []string{
		Subject(source),
		DLQSubject("capture-" + source),
		"$O." + LargeBucket + ".C.>",
		"$O." + LargeBucket + ".M.>",
	}
	pub = append(pub, readLarge...) // an earlier object's meta, to reuse it
	return Permissions{Publish: pub, Subscribe: []string{InboxPrefix(CaptureIdentity(source)) + ".>"}}
}

// FlowPermissions are what a flow needs: read and fetch from its durable
// consumer on DUPLEX (named after it; the operator creates and rewinds it
// for the flow, ApplierConfig.Manage), acknowledge, publish its dead
// letters (duplex.dlq.<flow>), read large changes from DUPLEX_LARGE, and
// its inbox. It may not create or change any consumer: a create request
// sets the consumer's whole configuration, and a push consumer's deliver
// subject would make JetStream publish the stream's messages wherever the
// flow asked. It cannot publish transactions, read other consumers, or
// purge or delete streams.
func FlowPermissions(flow string) Permissions {
	pub := []string{
		"$JS.API.CONSUMER.INFO." + StreamName + "." + flow,
		"$JS.API.CONSUMER.MSG.NEXT." + StreamName + "." + flow,
		"$JS.ACK." + StreamName + "." + flow + ".>",
		DLQSubject(flow),
	}
	pub = append(pub, readLarge...)
	return Permissions{Publish: pub, Subscribe: []string{InboxPrefix(FlowIdentity(flow)) + ".>"}}
}

// OperatorPermissions are the operator's: every subject, except the
// subjects of the sources' transactions, which only their captures
// publish. That includes the audit records of operator actions
// (duplex.audit.> in DUPLEX_AUDIT, internal/audit), which no capture or
// flow may publish: their allow lists do not name them.
func OperatorPermissions(sources []string) Permissions {
	p := Permissions{}
	for _, s := range sources {
		p.DenyPublish = append(p.DenyPublish, SourceFilter(s))
	}
	return p
}
