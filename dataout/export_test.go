package dataout

// Mechanism is mechanism, for the tests' consumers.
var Mechanism = mechanism
