package api

import "time"

// SpendRuleTests takes d from a tenant's share of the process's CPU for
// rules/test, as tests that took so long would.
func SpendRuleTests(s *Server, tenant string, d time.Duration) { s.ruleTests.Of(tenant).Spend(d) }
