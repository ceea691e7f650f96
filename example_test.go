package podnet_test

import (
	"errors"
	"fmt"

	"github.com/podnet/podnet"
)

// An error from any podnet package names the operation, the object and
// the namespace, and wraps a sentinel: test it with errors.Is, and reach
// the fields with errors.As.
func ExampleOpError() {
	// What veth.Create returns when the name is taken, wrapped by a caller.
	var err error = &podnet.OpError{
		Op: "create", Kind: "veth", Name: "veth1a2b3c4d",
		NetNS: "/var/run/netns/node0", Err: podnet.ErrExist,
	}
	err = fmt.Errorf("add pod %q: %w", "web-0", err)

	fmt.Println(err)
	fmt.Println(errors.Is(err, podnet.ErrExist), errors.Is(err, podnet.ErrNotFound))
	if op, ok := errors.AsType[*podnet.OpError](err); ok {
		fmt.Printf("%s %s %q\n", op.Op, op.Kind, op.Name)
	}
	// Output:
	// add pod "web-0": create veth "veth1a2b3c4d" in netns "/var/run/netns/node0": already exists
	// true false
	// create veth "veth1a2b3c4d"
}

// Bad input is refused with an error that matches ErrInvalid and says
// which input and why, before anything in the kernel changes.
func ExampleInvalid() {
	name := "a-name-longer-than-15"
	err := podnet.Invalid("interface name %q: longer than 15 bytes", name)
	fmt.Println(err)
	fmt.Println(errors.Is(err, podnet.ErrInvalid))
	// Output:
	// invalid argument: interface name "a-name-longer-than-15": longer than 15 bytes
	// true
}
