package pipeline

import (
	"encoding/json"
	"fmt"

	"github.com/duplex-cdc/duplex/transform"
)

// encodeTx is the body of the DUPLEX message that carries a source
// transaction, or one chunk of a large one: the JSON of transform.Tx.
func encodeTx(tx *transform.Tx) ([]byte, error) { return json.Marshal(tx) }

// decodeTx reads the body of a DUPLEX message into tx. A body that is not
// a transaction is an error: the applier dead-letters the message rather
// than holding the flow behind it.
func decodeTx(data []byte, tx *transform.Tx) error {
	if err := json.Unmarshal(data, tx); err != nil {
		return err
	}
	if tx.Chunk < 0 {
		// The assembler would wait for its chunk 0 forever.
		return fmt.Errorf("chunk %d is negative", tx.Chunk)
	}
	return nil
}
