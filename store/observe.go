package store

import (
	"context"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ExtractObserver is told of every layer extraction that runs under a
// context it is attached to (WithExtractObserver), as net/http/httptrace
// attaches a trace: to show progress without a parameter on every call
// between the command and the extraction.
type ExtractObserver interface {
	// Extracting is called as layer desc starts being read.
	Extracting(desc ocispec.Descriptor) ExtractMeter
}

// ExtractMeter follows one layer's extraction.
type ExtractMeter interface {
	// Read counts bytes of the layer's blob read.
	Read(n int)
	// Entry counts one tar entry stored.
	Entry()
	// Done ends the extraction, with its error.
	Done(err error)
}

type observerKey struct{}

// WithExtractObserver returns ctx with o attached.
func WithExtractObserver(ctx context.Context, o ExtractObserver) context.Context {
	return context.WithValue(ctx, observerKey{}, o)
}

func extractMeter(ctx context.Context, desc ocispec.Descriptor) ExtractMeter {
	if o, ok := ctx.Value(observerKey{}).(ExtractObserver); ok {
		return o.Extracting(desc)
	}
	return noMeter{}
}

type noMeter struct{}

func (noMeter) Read(int)   {}
func (noMeter) Entry()     {}
func (noMeter) Done(error) {}

// contextReader ends a read of a layer once ctx is done, so that an
// interrupted import or pull stops within one buffer and the extraction
// removes what it staged; it counts what it reads on meter.
type contextReader struct {
	ctx   context.Context
	r     io.Reader
	meter ExtractMeter
}

// ContextReader is r, its reads ended once ctx is done: a copy of a
// stream (an archive on stdin) stops within one buffer when interrupted.
func ContextReader(ctx context.Context, r io.Reader) io.Reader {
	return contextReader{ctx: ctx, r: r, meter: noMeter{}}
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.meter.Read(n)
	return n, err
}
