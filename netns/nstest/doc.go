// Package nstest provides fixtures for tests that need real network
// namespaces: throwaway namespaces removed when the test ends, a veth-joined
// pair of them, and a leak check for TestMain. It is for your tests as much
// as for podnet's own.
//
// # Privileges
//
// Creating namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN (usually root).
// Without them every fixture skips the test with a reason; with the
// environment variable PODNET_REQUIRE_PRIVILEGED=1 it fails the test instead,
// so that a CI run that is meant to be privileged cannot pass by skipping.
//
// # Safety
//
// Fixtures never change the namespace of the test process itself: links,
// addresses and routes are made only inside the namespaces they create.
package nstest
