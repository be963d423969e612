package dataout

import (
	"fmt"
	"regexp/syntax"
	"strings"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/functions"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/overloads"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
)

// MaxStringResult bounds a string a condition or projection builds with
// the functions that build one from many (ext.Strings' replace, format,
// join and strings.quote). Those build their result before the cost
// limit sees it (a call's cost is counted once it returns, from the
// result's size, or, for format, from the format string's), so one call
// could make a string of any size: payload.s.replace("a", payload.s)
// grows quadratically (16 GiB from 128 KiB), and
// "%s".format([payload.l.map(x, payload.s)]) with a 40 KB string and a
// list of 5,000 numbers builds 1.5 GB in one call. Past this bound the
// call fails instead, before building anything.
const MaxStringResult = 1 << 20

// MaxBuilt bounds the bytes of the strings and bytes that one message's
// rules make with string-building calls (+, format, join, replace, case
// changes, conversions between string and bytes, base64, quote) inside a
// comprehension's steps, all of them together. cel-go's cost limit does
// not charge those a comprehension makes: payload.l.map(x, payload.s +
// payload.s) over a 120 KB string and a list of 1,000 numbers made 47 MB
// before the time limit stopped it, and every connection of a tenant may
// evaluate a message at once. A call outside a comprehension runs once,
// and the cost limit charges it by its size. Past the bound the call
// fails, and every such call after it fails before building anything
// (an error that || or && absorbs does not let it build on); the rule
// does not match that message. The destination rules and the Kafka export
// rules of a message each have a count of their own.
const MaxBuilt = 8 << 20

// maxBuilt is MaxBuilt; tests lower it.
var maxBuilt = MaxBuilt

// builtVar names, among a message's variables (Input.Vars), the count of
// the bytes its rules built so far: a name no expression can spell.
const builtVar = "\x00built"

// built counts the bytes of strings and bytes one message's rules made:
// they are evaluated one at a time, by one goroutine.
type built struct{ n int }

// builds reports whether a call makes a new string or bytes of a size
// its arguments decide (rather than a small one, or a substring sharing
// its argument's memory), and for a conversion the type it converts to.
func builds(c interpreter.InterpretableCall) (ok bool, conv ref.Type) {
	switch c.Function() {
	case operators.Add, "format", "join", "replace", "lowerAscii", "upperAscii", "reverse", "strings.quote", "base64.encode", "base64.decode":
		return true, nil
	case overloads.TypeConvertString:
		return len(c.Args()) == 1, types.StringType
	case overloads.TypeConvertBytes:
		return len(c.Args()) == 1, types.BytesType
	}
	return false, nil
}

// boundBuilt returns a program decorator that charges the string or
// bytes result of every string-building call within a comprehension's
// loop step of a (see MaxBuilt) to the message's count (builtVar). A
// call evaluated without the count (outside Vars) is charged nothing.
func boundBuilt(a *cel.Ast) interpreter.InterpretableDecoratorV2 {
	inLoop := map[int64]bool{}
	celast.PreOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() != celast.ComprehensionKind {
			return
		}
		celast.PreOrderVisit(e.AsComprehension().LoopStep(), celast.NewExprVisitor(func(e celast.Expr) { inLoop[e.ID()] = true }))
	}))
	return func(i interpreter.InterpretableV2) (interpreter.InterpretableV2, error) {
		c, ok := i.(interpreter.InterpretableCall)
		if !ok || !inLoop[c.ID()] {
			return i, nil
		}
		if ok, conv := builds(c); ok {
			return builtCall{c, conv}, nil
		}
		return i, nil
	}
}

// builtCall is a string-building call, charged. A conversion (conv not
// nil) is made here as the standard library makes it (ref.Val's
// ConvertToType, or its argument itself when of the type already), so
// that a string passed through string() is not charged as if copied.
type builtCall struct {
	interpreter.InterpretableCall
	conv ref.Type
}

func (c builtCall) Eval(act interpreter.Activation) ref.Val {
	b := countOf(act)
	if b != nil && b.n > maxBuilt {
		return errBuilt()
	}
	if c.conv == nil {
		return charge(b, c.InterpretableCall.Eval(act))
	}
	return c.convert(b, c.Args()[0].Eval(act))
}

func (c builtCall) Exec(f *interpreter.ExecutionFrame) ref.Val {
	b := countOf(f)
	if b != nil && b.n > maxBuilt {
		return errBuilt()
	}
	if c.conv == nil {
		return charge(b, c.InterpretableCall.Exec(f))
	}
	return c.convert(b, c.Args()[0].Exec(f))
}

func (c builtCall) convert(b *built, arg ref.Val) ref.Val {
	if arg.Type() == c.conv {
		return arg
	}
	return charge(b, arg.ConvertToType(c.conv))
}

func countOf(act interpreter.Activation) *built {
	v, _ := act.ResolveName(builtVar)
	b, _ := v.(*built)
	return b
}

func errBuilt() ref.Val {
	return types.NewErr("the rules made more than %d bytes of strings in comprehensions for this message", maxBuilt)
}

func charge(b *built, v ref.Val) ref.Val {
	if b == nil {
		return v
	}
	switch v := v.(type) {
	case types.String:
		b.n += len(v)
	case types.Bytes:
		b.n += len(v)
	default:
		return v
	}
	if b.n > maxBuilt {
		return errBuilt()
	}
	return v
}

// boundedReplace redefines ext.Strings' replace overloads (same ids and
// signatures: cel-go lets a later binding replace an earlier one) to
// count what they would make first.
func boundedReplace() cel.EnvOption {
	do := func(s, old, new string, n int) ref.Val {
		count := strings.Count(s, old)
		if n >= 0 && n < count {
			count = n
		}
		if size := len(s) + count*(len(new)-len(old)); size > MaxStringResult {
			return types.NewErr("replace would make a string of %d bytes, more than %d", size, MaxStringResult)
		}
		return types.String(strings.Replace(s, old, new, n))
	}
	return cel.Function("replace",
		cel.MemberOverload("string_replace_string_string", []*cel.Type{cel.StringType, cel.StringType, cel.StringType}, cel.StringType,
			cel.FunctionBinding(func(args ...ref.Val) ref.Val {
				return do(string(args[0].(types.String)), string(args[1].(types.String)), string(args[2].(types.String)), -1)
			})),
		cel.MemberOverload("string_replace_string_string_int", []*cel.Type{cel.StringType, cel.StringType, cel.StringType, cel.IntType}, cel.StringType,
			cel.FunctionBinding(func(args ...ref.Val) ref.Val {
				return do(string(args[0].(types.String)), string(args[1].(types.String)), string(args[2].(types.String)), int(args[3].(types.Int)))
			})))
}

// boundedBuilders redefines ext.Strings' format, join and strings.quote
// (same ids and signatures, as boundedReplace) to bound the size of what
// they would make, from their arguments, before calling ext.Strings' own
// implementation. The bound is an upper one: format's text of a value is
// taken as at most textSize's.
func boundedBuilders() cel.EnvOption {
	own := stringsBindings()
	tooLarge := func(fn string) ref.Val {
		return types.NewErr("%s would make a string of more than %d bytes", fn, MaxStringResult)
	}
	return cel.Lib(builders{
		cel.Function("format",
			cel.MemberOverload("string_format", []*cel.Type{cel.StringType, cel.ListType(cel.DynType)}, cel.StringType,
				cel.FunctionBinding(func(args ...ref.Val) ref.Val {
					s, _ := args[0].(types.String)
					if len(s)+textSize(args[1], MaxStringResult, 0) > MaxStringResult {
						return tooLarge("format")
					}
					return own["string_format"].Function(args...)
				}))),
		cel.Function("join",
			cel.MemberOverload("list_join", []*cel.Type{cel.ListType(cel.StringType)}, cel.StringType,
				cel.UnaryBinding(func(list ref.Val) ref.Val {
					if joinSize(list, 0) > MaxStringResult {
						return tooLarge("join")
					}
					return own["list_join"].Unary(list)
				})),
			cel.MemberOverload("list_join_string", []*cel.Type{cel.ListType(cel.StringType), cel.StringType}, cel.StringType,
				cel.BinaryBinding(func(list, sep ref.Val) ref.Val {
					s, _ := sep.(types.String)
					if joinSize(list, len(s)) > MaxStringResult {
						return tooLarge("join")
					}
					return own["list_join_string"].Binary(list, sep)
				}))),
		cel.Function("strings.quote",
			cel.Overload("strings_quote", []*cel.Type{cel.StringType}, cel.StringType,
				cel.UnaryBinding(func(v ref.Val) ref.Val {
					// At most \u{…} of six bytes a byte, and the quotes.
					if s, _ := v.(types.String); 6*len(s)+2 > MaxStringResult {
						return tooLarge("strings.quote")
					}
					return own["strings_quote"].Unary(v)
				}))),
	})
}

// MaxPattern bounds a matches pattern, which must be a string literal of
// the condition or projection. Go's regexp runs in time linear in the
// text, with the pattern's program as a factor, all in one call that
// neither the cost limit (charged once the call returns) nor the time
// limit (checked between a comprehension's iterations) can stop: a
// pattern of 20 KB taken from the payload, over a text of 20 KB, took
// 1.1 s. A literal pattern of at most this many bytes over a 128 KiB
// payload takes tens of milliseconds at worst.
const MaxPattern = 256

// MaxPatternProgram bounds a matches pattern's compiled program, in Go
// regexp instructions: the factor its matching time has beside the
// text's length. A short pattern can still compile large, repeat after
// repeat ("[ab]{1000}" 24 times, 241 bytes, took 16.5 s over 100 KB);
// within this bound a 128 KiB text is matched in tens of milliseconds at
// worst. Ordinary patterns compile to a few dozen.
const MaxPatternProgram = 200

// checkPatterns refuses a matches call whose pattern is not a string
// literal of at most MaxPattern bytes, pointing at it.
func checkPatterns(a *cel.Ast) *ConditionError {
	native := a.NativeRep()
	var bad *ConditionError
	celast.PreOrderVisit(native.Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		if bad != nil || e.Kind() != celast.CallKind || e.AsCall().FunctionName() != "matches" {
			return
		}
		call := e.AsCall()
		args := call.Args()
		if len(args) == 0 {
			return
		}
		pattern := args[len(args)-1] // text.matches(p) or matches(text, p)
		lit, ok := literalString(pattern)
		msg := ""
		switch {
		case !ok:
			msg = "matches takes its pattern as a string literal (\"…\"), not from the message"
		case len(lit) > MaxPattern:
			msg = fmt.Sprintf("a matches pattern may have at most %d bytes, not %d", MaxPattern, len(lit))
		default:
			n, err := programSize(lit)
			if err != nil || n <= MaxPatternProgram {
				return // a pattern that does not parse is CEL's to report
			}
			msg = fmt.Sprintf("the matches pattern compiles to %d regular-expression instructions, more than %d (repeats like {1000} count each copy)", n, MaxPatternProgram)
		}
		loc := native.SourceInfo().GetStartLocation(pattern.ID())
		bad = &ConditionError{Line: max(loc.Line(), 1), Column: loc.Column() + 1, Msg: msg}
	}))
	return bad
}

// programSize is how many instructions pattern compiles to, as Go's
// regexp (RE2 syntax, which CEL's matches uses) compiles it.
func programSize(pattern string) (int, error) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return 0, err
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return 0, err
	}
	return len(prog.Inst), nil
}

func literalString(e celast.Expr) (string, bool) {
	if e.Kind() != celast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// builders is a cel.Library of the options given.
type builders []cel.EnvOption

func (b builders) CompileOptions() []cel.EnvOption     { return b }
func (b builders) ProgramOptions() []cel.ProgramOption { return nil }

// stringsBindings returns ext.Strings' implementations of the functions
// boundedBuilders wraps, by overload id. It panics if cel-go no longer
// has one of them: a version of cel-go that changed them must be looked
// at before it is used.
func stringsBindings() map[string]*functions.Overload {
	e, err := cel.NewEnv(ext.Strings())
	if err != nil {
		panic("dataout: ext.Strings: " + err.Error())
	}
	out := map[string]*functions.Overload{}
	for _, name := range []string{"format", "join", "strings.quote"} {
		bs, err := e.Functions()[name].Bindings()
		if err != nil {
			panic("dataout: ext.Strings' " + name + ": " + err.Error())
		}
		for _, b := range bs {
			out[b.Operator] = b
		}
	}
	for id, has := range map[string]func(*functions.Overload) bool{
		"string_format":    func(o *functions.Overload) bool { return o.Function != nil },
		"list_join":        func(o *functions.Overload) bool { return o.Unary != nil },
		"list_join_string": func(o *functions.Overload) bool { return o.Binary != nil },
		"strings_quote":    func(o *functions.Overload) bool { return o.Unary != nil },
	} {
		if o := out[id]; o == nil || !has(o) {
			panic("dataout: ext.Strings has no implementation of " + id)
		}
	}
	return out
}

// joinSize is the size of list's strings joined with a separator of sep
// bytes (each element that is not a string counted as one of textSize's
// scalars), counted until past MaxStringResult.
func joinSize(list ref.Val, sep int) int {
	l, ok := list.(traits.Lister)
	if !ok {
		return 0
	}
	n := 0
	for it := l.Iterator(); it.HasNext() == types.True && n <= MaxStringResult; {
		n += sep + textSize(it.Next(), MaxStringResult-n, 0)
	}
	return n
}

// scalarText is the most text a number, a timestamp or any other value
// but a string, bytes, a list or a map makes in format: a double with
// format's largest precision (100 digits) and its 309 digits before the
// point fits.
const scalarText = 512

// maxTextDepth is as deep as textSize looks into lists and maps; a value
// nested deeper is counted as too large.
const maxTextDepth = 64

// textSize is at most how many bytes format's text of v takes (a string
// twice over: %x writes two hex digits a byte; bytes four times over,
// escaped), counted until it passes limit: then the count returned is
// past limit, and what remains of v is not looked at.
func textSize(v ref.Val, limit, depth int) int {
	if depth > maxTextDepth {
		return limit + 1
	}
	switch v := v.(type) {
	case types.String:
		return 2*len(v) + 2
	case types.Bytes:
		return 4*len(v) + 3
	case traits.Mapper:
		n := 2
		for it := v.Iterator(); it.HasNext() == types.True && n <= limit; {
			k := it.Next()
			n += 4 + textSize(k, limit-n, depth+1)
			if n <= limit {
				e, _ := v.Find(k)
				n += textSize(e, limit-n, depth+1)
			}
		}
		return n
	case traits.Lister:
		n := 2
		for it := v.Iterator(); it.HasNext() == types.True && n <= limit; {
			n += 2 + textSize(it.Next(), limit-n, depth+1)
		}
		return n
	}
	return scalarText
}
