// Package tenants owns Roost's directory: accounts, tenants and their members,
// devices and their secrets, topic access rules, API keys, plans with their
// quotas, and the audit log of every change. Its Store keeps all of it in
// embedded SQLite or in Postgres behind the same methods.
//
// Every method that reads or writes an object of a tenant takes the tenant's
// slug and scopes its query by it, so an id of one tenant never reaches an
// object of another.
package tenants
