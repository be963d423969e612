package dataout

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/google/cel-go/cel"
	"google.golang.org/protobuf/types/known/structpb"
)

// MaxProjected bounds what a projection makes, in bytes of JSON: past it
// the projection fails for that message (the cost limit bounds the work,
// not the size of what a few operations can repeat). Below it, what a
// projection makes of a message is bounded by ProjectedLimit of the
// message's payload, so that small messages cannot be made large ones in
// an outbox (a disk write the tenant's bandwidth quota never saw).
const MaxProjected = 256 << 10

// ProjectedFloor is what a projection may always make: room for the
// topic, device, metadata and names around a small payload.
const ProjectedFloor = 4 << 10

// ProjectedLimit is the most JSON a projection may make of a payload of
// n bytes: ProjectedFloor plus twice the payload, at most MaxProjected.
func ProjectedLimit(n int) int { return min(ProjectedFloor+2*n, MaxProjected) }

// Projection is a compiled CEL projection: an expression over the same
// variables as a condition whose value, as JSON, is what a rule sends in
// place of the message's payload, e.g.
//
//	{"temp": payload.temp, "device": device, "room": metadata.room}
//
// Compile it once (per rule); it is safe for concurrent use.
type Projection struct {
	src string
	prg cel.Program
}

// CompileProjection parses and type-checks src. Its value must be one
// JSON can carry: a map with string keys, a list, a string, a number, a
// bool or null (a timestamp becomes its RFC 3339 text, bytes their
// base64), checked as far as the types say at compile time and fully when
// evaluated. An error is a *ConditionError pointing into src.
func CompileProjection(src string) (*Projection, error) {
	e, err := env()
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(src) == "" {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: "the projection is empty"}
	}
	ast, iss := e.Compile(src)
	if iss.Err() != nil {
		return nil, compileError(iss)
	}
	if t := ast.OutputType(); t.Kind() == cel.MapKind && !t.Parameters()[0].IsExactType(cel.StringType) && !t.Parameters()[0].IsExactType(cel.DynType) {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: fmt.Sprintf("a projection's map needs string keys, not %s", t.Parameters()[0])}
	}
	prg, err := e.Program(ast, cel.CostLimit(ConditionCostLimit), cel.InterruptCheckFrequency(100), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: err.Error()}
	}
	return &Projection{src: src, prg: prg}, nil
}

// String returns the projection's source.
func (p *Projection) String() string { return p.src }

var jsonValueType = reflect.TypeOf(&structpb.Value{})

// Eval returns the projection's value for in, as JSON.
func (p *Projection) Eval(ctx context.Context, in Input) ([]byte, error) {
	return p.evalVars(ctx, in.Vars(), len(in.Payload))
}

// evalVars evaluates the projection over vars, for a payload of size
// bytes.
func (p *Projection) evalVars(ctx context.Context, vars map[string]any, size int) ([]byte, error) {
	out, _, err := p.prg.ContextEval(ctx, vars)
	if err != nil {
		if strings.Contains(err.Error(), "cost limit exceeded") {
			return nil, ErrCostLimit
		}
		return nil, err
	}
	native, err := out.ConvertToNative(jsonValueType)
	if err != nil {
		return nil, fmt.Errorf("the projection's value is not JSON: %w", err)
	}
	b, err := json.Marshal(native.(*structpb.Value).AsInterface())
	if err != nil {
		return nil, fmt.Errorf("the projection's value is not JSON: %w", err)
	}
	if limit := ProjectedLimit(size); len(b) > limit {
		return nil, fmt.Errorf("the projection made %d bytes of JSON, more than %d (4 KiB and twice the payload's %d bytes, at most 256 KiB)", len(b), limit, size)
	}
	return b, nil
}
