package auth

// SetMFAResealPage sets how many accounts ResealMFA reads at a time, until
// the test ends.
func SetMFAResealPage(t interface{ Cleanup(func()) }, n int) {
	old := mfaResealPage
	mfaResealPage = n
	t.Cleanup(func() { mfaResealPage = old })
}
