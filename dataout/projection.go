package dataout

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
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
	if err := checkPatterns(ast); err != nil {
		return nil, err
	}
	if t := ast.OutputType(); t.Kind() == cel.MapKind && !t.Parameters()[0].IsExactType(cel.StringType) && !t.Parameters()[0].IsExactType(cel.DynType) {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: fmt.Sprintf("a projection's map needs string keys, not %s", t.Parameters()[0])}
	}
	prg, err := e.Program(ast, cel.CostLimit(ConditionCostLimit), cel.InterruptCheckFrequency(100), cel.EvalOptions(cel.OptOptimize),
		cel.CustomDecoratorV2(boundBuilt(ast)))
	if err != nil {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: err.Error()}
	}
	return &Projection{src: src, prg: prg}, nil
}

// String returns the projection's source.
func (p *Projection) String() string { return p.src }

// Eval returns the projection's value for in, as JSON.
func (p *Projection) Eval(ctx context.Context, in Input) ([]byte, error) {
	vars := in.Vars()
	ctx, cancel := EvalContext(ctx)
	defer cancel()
	return p.evalVars(ctx, vars, len(in.Payload))
}

// evalVars evaluates the projection over vars, for a payload of size
// bytes.
func (p *Projection) evalVars(ctx context.Context, vars map[string]any, size int) ([]byte, error) {
	out, _, err := p.prg.ContextEval(ctx, vars)
	if err != nil {
		if strings.Contains(err.Error(), "cost limit exceeded") {
			return nil, errProjectionCost
		}
		if ctx.Err() != nil {
			return nil, timeLimit(ctx)
		}
		return nil, err
	}
	w := jsonWriter{ctx: ctx, limit: ProjectedLimit(size)}
	if err := w.value(out, 0); err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("the projection makes more than %d bytes of JSON (4 KiB and twice the payload's %d bytes, at most 256 KiB)", w.limit, size)
		}
		if ctx.Err() != nil {
			return nil, timeLimit(ctx)
		}
		return nil, err
	}
	return w.buf, nil
}

// errProjectionCost: evaluating a projection took more than the cost
// limit.
var errProjectionCost = errors.New("the projection costs more than the limit to evaluate")

var errTooLarge = errors.New("too large")

// maxDepth bounds how deeply a projection's value nests.
const maxDepth = 100

// jsonWriter writes a CEL value as JSON, stopping as soon as it passes
// its limit: a value whose parts are shared (a list of a thousand
// references to the payload costs CEL little) never becomes more than
// the limit in memory. Map keys are sorted, so the same value is the
// same JSON.
type jsonWriter struct {
	ctx   context.Context
	buf   []byte
	limit int
	steps int
}

func (w *jsonWriter) room(n int) error {
	if len(w.buf)+n > w.limit {
		return errTooLarge
	}
	return nil
}

func (w *jsonWriter) raw(s string) error {
	if err := w.room(len(s)); err != nil {
		return err
	}
	w.buf = append(w.buf, s...)
	return nil
}

func (w *jsonWriter) str(s string) error {
	if err := w.room(len(s) + 2); err != nil { // escaping only adds
		return err
	}
	b, _ := json.Marshal(s)
	return w.raw(string(b))
}

func (w *jsonWriter) value(v ref.Val, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("the projection's value nests more than %d deep", maxDepth)
	}
	if w.steps++; w.steps%1024 == 0 && w.ctx.Err() != nil {
		return w.ctx.Err()
	}
	switch v := v.(type) {
	case types.Null:
		return w.raw("null")
	case types.Bool:
		return w.raw(strconv.FormatBool(bool(v)))
	case types.Int:
		return w.raw(strconv.FormatInt(int64(v), 10))
	case types.Uint:
		return w.raw(strconv.FormatUint(uint64(v), 10))
	case types.Double:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("the projection's value holds %v, which is not JSON", f)
		}
		b, _ := json.Marshal(f)
		return w.raw(string(b))
	case types.String:
		return w.str(string(v))
	case types.Bytes:
		if err := w.room(base64.StdEncoding.EncodedLen(len(v)) + 2); err != nil {
			return err
		}
		return w.raw(`"` + base64.StdEncoding.EncodeToString(v) + `"`)
	case types.Timestamp:
		return w.str(v.Time.UTC().Format(time.RFC3339Nano))
	case types.Duration:
		return w.str(strconv.FormatFloat(v.Duration.Seconds(), 'f', -1, 64) + "s")
	case traits.Mapper:
		var keys []string
		need := 0 // what the keys alone will take: "k":v, each
		for it := v.Iterator(); it.HasNext() == types.True; {
			k, ok := it.Next().(types.String)
			if !ok {
				return errors.New("the projection's value is not JSON: a map's keys must be strings")
			}
			if need += len(k) + 4; w.room(need) != nil {
				return errTooLarge
			}
			keys = append(keys, string(k))
		}
		slices.Sort(keys)
		if err := w.raw("{"); err != nil {
			return err
		}
		for i, k := range keys {
			if i > 0 {
				if err := w.raw(","); err != nil {
					return err
				}
			}
			if err := w.str(k); err != nil {
				return err
			}
			if err := w.raw(":"); err != nil {
				return err
			}
			e, _ := v.Find(types.String(k))
			if err := w.value(e, depth+1); err != nil {
				return err
			}
		}
		return w.raw("}")
	case traits.Lister:
		if err := w.raw("["); err != nil {
			return err
		}
		for i, it := 0, v.Iterator(); it.HasNext() == types.True; i++ {
			if i > 0 {
				if err := w.raw(","); err != nil {
					return err
				}
			}
			if err := w.value(it.Next(), depth+1); err != nil {
				return err
			}
		}
		return w.raw("]")
	case *types.Err:
		return v
	default:
		return fmt.Errorf("the projection's value is not JSON: a %s", v.Type().TypeName())
	}
}
