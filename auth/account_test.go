package auth_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/roosthub/roost/auth"
	"github.com/roosthub/roost/internal/problem"
	"github.com/roosthub/roost/internal/testenv"
	"github.com/roosthub/roost/mail"
	"github.com/roosthub/roost/tenants"
)

// mailbox is a mailer that keeps what it is given.
type mailbox struct {
	mu   sync.Mutex
	sent []mail.Message
}

func (m *mailbox) Send(_ context.Context, msg mail.Message) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sent = append(m.sent, msg)
	return nil
}

func (m *mailbox) messages() []mail.Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]mail.Message(nil), m.sent...)
}

// newService is an auth service over a new, migrated store at databaseURL
// ("": SQLite in a temporary directory), with the clock clk and the mailer.
func newService(t *testing.T, databaseURL string, clk *testenv.Clock, mailer mail.Mailer) (*auth.Service, *tenants.Store) {
	t.Helper()
	ctx := context.Background()
	dir := ""
	if databaseURL == "" {
		dir = t.TempDir()
	}
	store, err := tenants.Open(ctx, databaseURL, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if _, err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	svc, err := auth.New(auth.Config{Store: store, SigningKey: bytes.Repeat([]byte("s"), 32), AdminToken: operatorToken,
		Now: clk.Now, Mailer: mailer, PublicURL: "https://hub.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc, store
}

// TestForgotPasswordSameWorkForAnyEmail: ForgotPassword answers before it
// reads the store, for an email with an account and one without: with the
// accounts table locked, both answer nil at once. The account is looked up
// and the link mailed in the background once the lock goes; the email
// with no account gets nothing. (Before, the email with an account cost a
// token's insert and an audit row on the request path, which the other
// did not: about a millisecond, enough to tell them apart.)
func TestForgotPasswordSameWorkForAnyEmail(t *testing.T) {
	url := testenv.PostgresURL(t)
	box := &mailbox{}
	svc, store := newService(t, url, testenv.NewClock(time.Now()), box)
	ctx := context.Background()
	if _, err := store.CreateAccount(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}

	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	lock, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback()
	if _, err := lock.ExecContext(ctx, `LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	for _, email := range []string{"ADA@example.com", "nobody@example.com"} {
		// A request path that read the accounts table would wait for the
		// lock until this deadline and answer its error.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := svc.ForgotPassword(rctx, email, "192.0.2.1")
		cancel()
		if err != nil {
			t.Fatalf("ForgotPassword(%s) with the accounts table locked: %v, want nil", email, err)
		}
	}
	if n := len(box.messages()); n != 0 {
		t.Fatalf("%d mails sent while the accounts table was locked, want 0", n)
	}
	if err := lock.Rollback(); err != nil {
		t.Fatal(err)
	}
	svc.Close() // waits for the background work

	sent := box.messages()
	if len(sent) != 1 || sent[0].To != "ada@example.com" || !strings.Contains(sent[0].Text, "https://hub.example.com/password/reset?token=") {
		t.Fatalf("mails sent: %+v; want one reset link, to ada@example.com", sent)
	}
}

// TestForgotPasswordThrottledAlike: the fourth request in a row for an
// email waits, whether or not the email has an account, and the answers
// are the same.
func TestForgotPasswordThrottledAlike(t *testing.T) {
	box := &mailbox{}
	svc, store := newService(t, "", testenv.NewClock(time.Now()), box)
	ctx := context.Background()
	if _, err := store.CreateAccount(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	var answers []string
	for _, email := range []string{"ada@example.com", "nobody@example.com"} {
		for i := range 4 {
			err := svc.ForgotPassword(ctx, email, "192.0.2.1")
			if (err != nil) != (i == 3) {
				t.Fatalf("request %d for %s: %v; want a wait only for the fourth", i+1, email, err)
			}
			if err != nil {
				answers = append(answers, err.Error())
			}
		}
	}
	if answers[0] != answers[1] {
		t.Errorf("the waits differ: %q for an account, %q for none", answers[0], answers[1])
	}
	svc.Close()
	if n := len(box.messages()); n != 3 {
		t.Errorf("%d mails sent, want 3 (to ada@example.com)", n)
	}
	for _, m := range box.messages() {
		if m.To != "ada@example.com" {
			t.Errorf("a mail to %s, want none", m.To)
		}
	}
}

// TestNoJobAfterClose: a request answered once Close has begun starts no
// background work Close would not wait for: the reset is dropped (and
// logged), not raced against the store's closing.
func TestNoJobAfterClose(t *testing.T) {
	box := &mailbox{}
	svc, store := newService(t, "", testenv.NewClock(time.Now()), box)
	ctx := context.Background()
	if _, err := store.CreateAccount(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	svc.Close()
	if err := svc.ForgotPassword(ctx, "ada@example.com", "192.0.2.1"); err != nil {
		t.Fatalf("ForgotPassword after Close: %v, want the same answer as ever", err)
	}
	svc.Close()
	if n := len(box.messages()); n != 0 {
		t.Errorf("%d mails sent by a job started after Close, want 0", n)
	}
}

// TestLoginBudgetsAcrossProcesses: two control-plane processes on one
// database share the login budgets: a guesser spreading wrong passwords
// over both gets the account's ten free ones, not ten from each; and a
// restarted process still knows the address the owner signed in from
// before, so the owner's right password from there is let in while a
// stranger has spent the account's budget (before, a restart made it a
// new address, held to that budget: the stranger locked the owner out).
func TestLoginBudgetsAcrossProcesses(t *testing.T) {
	for name, url := range map[string]func(*testing.T) string{
		"sqlite":   func(*testing.T) string { return "" },
		"postgres": func(t *testing.T) string { return testenv.PostgresURL(t) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			clk := testenv.NewClock(time.Now())
			first, store := newService(t, url(t), clk, nil)
			process := func() *auth.Service {
				svc, err := auth.New(auth.Config{Store: store, SigningKey: bytes.Repeat([]byte("s"), 32), AdminToken: operatorToken, Now: clk.Now})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(svc.Close)
				return svc
			}
			second := process()
			if _, err := store.CreateAccount(ctx, tenants.Signup{Email: "ada@example.com", Password: "correct horse battery"}); err != nil {
				t.Fatal(err)
			}
			if _, err := first.LogIn(ctx, "ada@example.com", "correct horse battery", "198.51.100.7"); err != nil {
				t.Fatalf("the owner's sign-in: %v", err)
			}
			restarted := process() // the first process, started again
			evaluated := 0
			for i := range 40 {
				svc := restarted
				if i%2 == 1 {
					svc = second
				}
				// From addresses of their own, so that only the account's
				// budget binds them.
				_, err := svc.LogIn(ctx, "ada@example.com", "wrong", fmt.Sprintf("203.0.113.%d", i))
				switch {
				case errors.Is(err, auth.ErrBadCredentials):
					evaluated++
				case problem.Of(err).Status == http.StatusTooManyRequests:
				default:
					t.Fatalf("wrong login %d: %v", i, err)
				}
			}
			if evaluated != 10 {
				t.Errorf("%d of 40 wrong logins spread over two processes were evaluated, want the account's 10", evaluated)
			}
			if _, err := restarted.LogIn(ctx, "ada@example.com", "correct horse battery", "198.51.100.7"); err != nil {
				t.Errorf("the owner, from the address it signed in from, after a restart: %v", err)
			}
			if _, err := restarted.LogIn(ctx, "ada@example.com", "correct horse battery", "192.0.2.200"); problem.Of(err).Status != http.StatusTooManyRequests {
				t.Errorf("a first sign-in from a new address while the account's budget is spent: %v, want 429", err)
			}
		})
	}
}
