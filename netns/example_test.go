package netns_test

import (
	"fmt"
	"log"
	"net"

	"github.com/podnet/podnet/netns"
)

// Create a namespace that `ip netns` sees, run code inside it, and remove it.
func Example() {
	ns, err := netns.NewNamed("demo")
	if err != nil {
		log.Fatal(err)
	}
	defer netns.DeleteNamed("demo")
	defer ns.Close()

	// A listener opened inside Do stays in the namespace afterwards.
	var ln net.Listener
	err = ns.Do(func() error {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	ino, _ := ns.Inode()
	fmt.Printf("listening on %s inside netns %s (inode %d)\n", ln.Addr(), ns.Name(), ino)
}

// List the named namespaces, as `ip netns list` and `ls -i /var/run/netns` do.
func ExampleList() {
	entries, err := netns.List()
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e.Inode, e.Name)
	}
}

// Find which named namespace a process is in, like `ip netns identify PID`.
func ExampleIdentify() {
	names, err := netns.Identify(27255)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(names)
}
