package dataout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/ext"

	"github.com/roosthub/roost/tenants"
)

// ConditionCostLimit bounds one evaluation of a condition, in CEL's cost
// units (roughly one per operation, plus one per few bytes a string
// function reads). A typical condition costs under 50; scanning a 128 KiB
// payload as text about 13,000. Past the limit, evaluation stops and the
// message does not match.
const ConditionCostLimit = 100_000

// EvalTimeLimit bounds the time one message's rules take to evaluate,
// all of them together (RuleSet.AppendMatches; Rule.Match and Rule.Apply
// give one rule as long). cel-go's cost limit does not bound the time: its
// tracker's own work grows with the square of a list's length
// (payload.l.all(x, x == 0) over 16,000 numbers took 0.8 s within the
// limit), and strings a comprehension builds with + are not charged
// (payload.l.map(x, payload.s + payload.s) built 393 MB within it; now
// MaxBuilt bounds them).
// Evaluation checks the time every 100 iterations of a comprehension;
// past the limit a rule fails with ErrTimeLimit and does not match. A
// typical condition takes a few microseconds, a scan of a 128 KiB payload
// as text well under a millisecond; with the tracker, exists() over 2,000
// numbers takes 8 ms and over 4,000 25 ms (without it, 0.3 and under 1:
// the upstream fix is for refValStack.drop not to search the whole
// stack). A tenant's messages together are held to their Budget.
const EvalTimeLimit = 50 * time.Millisecond

// evalTimeLimit is EvalTimeLimit; tests of other bounds raise it.
var evalTimeLimit = EvalTimeLimit

// ErrTimeLimit: the message's rules took more than EvalTimeLimit.
var ErrTimeLimit = fmt.Errorf("the rules took more than %v to evaluate for this message", EvalTimeLimit)

// EvalContext is ctx with EvalTimeLimit from now, or ctx's own deadline
// if sooner: the context to evaluate one message's rules in.
func EvalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, evalTimeLimit)
}

// ConditionError is a condition that does not compile, with where in it
// the first problem is (1-based line and column).
type ConditionError struct {
	Line, Column int
	Msg          string
}

func (e *ConditionError) Error() string {
	return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Column, e.Msg)
}

// Condition is a compiled CEL condition over one message. Compile it once
// (per rule) and evaluate it for many messages; it is safe for concurrent
// use.
type Condition struct {
	src string
	prg cel.Program
}

var (
	envOnce sync.Once
	celEnv  *cel.Env
	envErr  error
)

// env is the CEL environment conditions compile in. Its variables are
// the message as documented in docs/data-out.md.
func env() (*cel.Env, error) {
	envOnce.Do(func() {
		celEnv, envErr = cel.NewEnv(
			cel.Variable("payload", cel.DynType),
			cel.Variable("topic", cel.StringType),
			cel.Variable("topic_levels", cel.ListType(cel.StringType)),
			cel.Variable("device", cel.StringType),
			cel.Variable("client_id", cel.StringType),
			cel.Variable("qos", cel.IntType),
			cel.Variable("time", cel.TimestampType),
			cel.Variable("metadata", cel.MapType(cel.StringType, cel.StringType)),
			cel.CrossTypeNumericComparisons(true),
			cel.DefaultUTCTimeZone(true),
			cel.ParserExpressionSizeLimit(tenants.MaxConditionLength),
			cel.ParserRecursionLimit(50),
			ext.Strings(),
			ext.Encoders(),
			boundedReplace(),
			boundedBuilders(),
		)
	})
	return celEnv, envErr
}

// CompileCondition parses and type-checks src. Its result must be a
// bool (or dyn, such as payload.alarm, checked when evaluated). An error
// is a *ConditionError pointing into src.
func CompileCondition(src string) (*Condition, error) {
	e, err := env()
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(src) == "" {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: "the condition is empty"}
	}
	ast, iss := e.Compile(src)
	if iss.Err() != nil {
		return nil, compileError(iss)
	}
	if err := checkPatterns(ast); err != nil {
		return nil, err
	}
	if t := ast.OutputType(); !t.IsExactType(cel.BoolType) && !t.IsExactType(cel.DynType) {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: fmt.Sprintf("the condition must be true or false, not %s", t)}
	}
	prg, err := e.Program(ast, cel.CostLimit(ConditionCostLimit), cel.InterruptCheckFrequency(100), cel.EvalOptions(cel.OptOptimize),
		cel.CustomDecoratorV2(boundBuilt(ast)))
	if err != nil {
		return nil, &ConditionError{Line: 1, Column: 1, Msg: err.Error()}
	}
	return &Condition{src: src, prg: prg}, nil
}

// compileError is where the first of a compilation's issues is.
func compileError(iss *cel.Issues) *ConditionError {
	errs := iss.Errors()
	if len(errs) == 0 {
		return &ConditionError{Line: 1, Column: 1, Msg: iss.Err().Error()}
	}
	first := errs[0]
	return &ConditionError{Line: max(first.Location.Line(), 1), Column: first.Location.Column() + 1, Msg: first.Message}
}

// String returns the condition's source.
func (c *Condition) String() string { return c.src }

// Input is one message as conditions see it.
type Input struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Device   string
	ClientID string
	Time     time.Time
	// Metadata is the publishing device's metadata.
	Metadata map[string]string
}

// Vars returns the CEL variables for in: payload is the parsed JSON when
// the payload is JSON (IsJSON), else its bytes; and, under a name no
// expression can spell, the count of the bytes its rules build (MaxBuilt).
func (in Input) Vars() map[string]any {
	var payload any = in.Payload
	if IsJSON(in.Payload) {
		var v any
		if json.Unmarshal(in.Payload, &v) == nil {
			payload = v
		}
	}
	md := in.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return map[string]any{
		"payload": payload, "topic": in.Topic, "topic_levels": strings.Split(in.Topic, "/"),
		"device": in.Device, "client_id": in.ClientID, "qos": int64(in.QoS), "time": in.Time.UTC(), "metadata": md,
		builtVar: new(built),
	}
}

// timeLimit is the error of an evaluation ctx ended: ErrTimeLimit when
// its deadline passed.
func timeLimit(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrTimeLimit
	}
	return ctx.Err()
}

// ErrCostLimit: evaluating a condition took more than ConditionCostLimit.
var ErrCostLimit = errors.New("the condition costs more than the limit to evaluate")

// Eval reports whether in satisfies the condition. An evaluation error
// (a missing field, a wrong type, the cost limit) is no match, with the
// error saying why.
func (c *Condition) Eval(ctx context.Context, in Input) (bool, error) {
	vars := in.Vars()
	ctx, cancel := EvalContext(ctx)
	defer cancel()
	return c.evalVars(ctx, vars)
}

func (c *Condition) evalVars(ctx context.Context, vars map[string]any) (bool, error) {
	out, _, err := c.prg.ContextEval(ctx, vars)
	if err != nil {
		if strings.Contains(err.Error(), "cost limit exceeded") {
			return false, ErrCostLimit
		}
		if ctx.Err() != nil {
			return false, timeLimit(ctx)
		}
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("the condition gave %v, not true or false", out.Value())
	}
	return b, nil
}

// Rule is a rule compiled for matching: its filter, and its condition
// and projection, compiled once.
type Rule struct {
	tenants.ExportRule
	cond *Condition
	proj *Projection
}

// RuleError is a rule's condition or projection that does not compile.
type RuleError struct {
	// Field is "condition" or "projection".
	Field string
	Err   *ConditionError
}

func (e *RuleError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *RuleError) Unwrap() error { return e.Err }

// CompileRule compiles a rule's condition and projection, those it has.
// An error is a *RuleError saying which and where.
func CompileRule(r tenants.ExportRule) (*Rule, error) {
	out := &Rule{ExportRule: r}
	var err error
	if r.Condition != "" {
		if out.cond, err = CompileCondition(r.Condition); err != nil {
			return nil, ruleError("condition", err)
		}
	}
	if r.Projection != "" {
		if out.proj, err = CompileProjection(r.Projection); err != nil {
			return nil, ruleError("projection", err)
		}
	}
	return out, nil
}

func ruleError(field string, err error) error {
	if ce, ok := err.(*ConditionError); ok {
		return &RuleError{Field: field, Err: ce}
	}
	return err
}

// Shapes reports whether the rule has a condition or a projection, which
// read the message beyond its topic.
func (r *Rule) Shapes() bool { return r.cond != nil || r.proj != nil }

// Match reports whether in's topic matches the rule's filter and the
// message satisfies its condition. err says why a condition could not be
// evaluated (then it does not match).
func (r *Rule) Match(ctx context.Context, in Input) (bool, error) {
	if !tenants.MatchTopic(r.Filter, in.Topic) {
		return false, nil
	}
	if r.cond == nil {
		return true, nil
	}
	vars := in.Vars()
	ctx, cancel := EvalContext(ctx)
	defer cancel()
	return r.cond.evalVars(ctx, vars)
}

// Apply is Match, then the rule's projection: what the rule sends for a
// message it matches, in.Payload without a projection. A projection that
// cannot be evaluated fails the match, with the error.
func (r *Rule) Apply(ctx context.Context, in Input) (bool, []byte, error) {
	if !tenants.MatchTopic(r.Filter, in.Topic) {
		return false, nil, nil
	}
	if !r.Shapes() {
		return true, in.Payload, nil
	}
	vars := in.Vars()
	ctx, cancel := EvalContext(ctx)
	defer cancel()
	return r.apply(ctx, vars, in.Payload, len(in.Payload))
}

// apply evaluates the condition, then the projection, over vars: the
// projection's value, or payload without one. size is the message's
// payload's.
func (r *Rule) apply(ctx context.Context, vars map[string]any, payload []byte, size int) (bool, []byte, error) {
	if r.cond != nil {
		ok, err := r.cond.evalVars(ctx, vars)
		if !ok || err != nil {
			return false, nil, err
		}
	}
	if r.proj == nil {
		return true, payload, nil
	}
	b, err := r.proj.evalVars(ctx, vars, size)
	if err != nil {
		return false, nil, &ProjectionError{Err: err}
	}
	return true, b, nil
}

// Evaluation applies rules to one message one after another, as a caller
// that walks its own list of rules does (the Kafka export): the message's
// variables are made once, the rules share one EvalTimeLimit from the
// first that evaluates, and the time they take is counted for the
// tenant's Budget (Spent).
type Evaluation struct {
	in     Input
	vars   map[string]any
	ctx    context.Context
	cancel context.CancelFunc
	spent  time.Duration
}

// NewEvaluation is an Evaluation of in.
func NewEvaluation(in Input) *Evaluation { return &Evaluation{in: in} }

// Apply is r.Apply within the evaluation.
func (e *Evaluation) Apply(r *Rule) (bool, []byte, error) {
	if !tenants.MatchTopic(r.Filter, e.in.Topic) {
		return false, nil, nil
	}
	if !r.Shapes() {
		return true, e.in.Payload, nil
	}
	start := time.Now()
	if e.vars == nil {
		e.vars = e.in.Vars()
		e.ctx, e.cancel = EvalContext(context.Background())
	}
	ok, payload, err := r.apply(e.ctx, e.vars, e.in.Payload, len(e.in.Payload))
	e.spent += time.Since(start)
	return ok, payload, err
}

// Spent ends the evaluation and returns the time its rules took.
func (e *Evaluation) Spent() time.Duration {
	if e.cancel != nil {
		e.cancel()
	}
	return e.spent
}

// ProjectionError is a projection that could not be evaluated for a
// message (then the rule does not send it).
type ProjectionError struct{ Err error }

func (e *ProjectionError) Error() string { return "projection: " + e.Err.Error() }
func (e *ProjectionError) Unwrap() error { return e.Err }

// RuleSet is a tenant's rules compiled once, to match each message
// against all of them; it is safe for concurrent use.
type RuleSet struct {
	rules  []*Rule
	budget *Budget
}

// WithBudget returns the set evaluating messages within budget (see
// Budget): the tenant's on this node, kept across changes of its rules.
func (s *RuleSet) WithBudget(b *Budget) *RuleSet {
	c := *s
	c.budget = b
	return &c
}

// Match is a rule a message matched, or whose condition or projection
// could not be evaluated for it (Err set; then it did not match).
// Payload is what the rule sends: its projection's value, or nil for
// the message's own payload.
type Match struct {
	Rule    *Rule
	Err     error
	Payload []byte
}

// CompileRules compiles rules. A rule that does not compile (checked when
// it was made, so only after a change of the condition language) is left
// out and reported.
func CompileRules(rules []tenants.ExportRule) (*RuleSet, []error) {
	return new(Compiler).CompileRules(rules)
}

// Compiler compiles a tenant's rules again at each change of them (or of
// its destinations), reusing the condition and projection compiled last
// time for the same texts: a change costs the compiling of what changed.
// Some conditions of 4 KiB take a few tenths of a second to compile, so
// 100 rules compiled again for a destination renamed would keep a core
// busy for half a minute, in the path of the tenant's next publish. It
// keeps only what its last call compiled. The zero value is ready; it is
// safe for concurrent use.
type Compiler struct {
	mu   sync.Mutex
	last map[ruleTexts]*Rule
}

// ruleTexts is what a compiled rule is reused for.
type ruleTexts struct{ condition, projection string }

// Compile compiles rules as CompileRules does, into a list.
func (c *Compiler) Compile(rules []tenants.ExportRule) ([]*Rule, []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := make(map[ruleTexts]*Rule, len(rules))
	out := make([]*Rule, 0, len(rules))
	var errs []error
	for _, r := range rules {
		k := ruleTexts{r.Condition, r.Projection}
		done := next[k] // another rule of this list
		if done == nil {
			done = c.last[k]
		}
		if done != nil {
			out = append(out, &Rule{ExportRule: r, cond: done.cond, proj: done.proj})
			next[k] = done
			continue
		}
		compiled, err := CompileRule(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", r.ID, err))
			continue
		}
		out = append(out, compiled)
		next[k] = compiled
	}
	c.last = next
	return out, errs
}

// CompileRules is CompileRules, reusing what c compiled last.
func (c *Compiler) CompileRules(rules []tenants.ExportRule) (*RuleSet, []error) {
	list, errs := c.Compile(rules)
	return &RuleSet{rules: list}, errs
}

// appendFailed appends err as the outcome of every rule from first on
// whose filter matches topic: those that need evaluating fail with it,
// those that do not match as they are.
func appendFailed(out []Match, rules []*Rule, first *Rule, topic string, err error) []Match {
	i := slices.Index(rules, first)
	for _, r := range rules[i:] {
		switch {
		case !tenants.MatchTopic(r.Filter, topic):
		case r.Shapes():
			out = append(out, Match{Rule: r, Err: err})
		default:
			out = append(out, Match{Rule: r})
		}
	}
	return out
}

// MatchesTopic reports whether any rule's filter matches topic: when none
// does, Match would return nothing, and the caller need not gather the
// message's input.
func (s *RuleSet) MatchesTopic(topic string) bool {
	for _, r := range s.rules {
		if tenants.MatchTopic(r.Filter, topic) {
			return true
		}
	}
	return false
}

// Match returns the rules in matches and the evaluation failures; the
// message's variables (its payload parsed once) are built only if a rule
// with a condition or a projection matches its topic.
func (s *RuleSet) Match(ctx context.Context, in Input) []Match {
	return s.AppendMatches(ctx, nil, in)
}

// AppendMatches is Match appending to out, so that a caller on the
// publish path can match into a buffer of its own.
func (s *RuleSet) AppendMatches(ctx context.Context, out []Match, in Input) []Match {
	var vars map[string]any
	for _, r := range s.rules {
		if !tenants.MatchTopic(r.Filter, in.Topic) {
			continue
		}
		if !r.Shapes() {
			out = append(out, Match{Rule: r})
			continue
		}
		if vars == nil {
			if s.budget != nil {
				if err := s.budget.Wait(ctx); err != nil {
					return appendFailed(out, s.rules, r, in.Topic, err)
				}
				start := time.Now()
				defer func() { s.budget.Spend(time.Since(start)) }()
			}
			vars = in.Vars()
			var cancel context.CancelFunc
			ctx, cancel = EvalContext(ctx)
			defer cancel()
		}
		ok, payload, err := r.apply(ctx, vars, nil, len(in.Payload))
		switch {
		case err != nil:
			out = append(out, Match{Rule: r, Err: err})
		case ok:
			out = append(out, Match{Rule: r, Payload: payload})
		}
	}
	return out
}
