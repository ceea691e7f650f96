// Command nopcni is a CNI plugin that does nothing and succeeds: run
// through the same harness as the real plugins, it measures the harness's
// own cost (cnitool, ip netns exec, process start) so benchmark results can
// be read against that floor.
package main

import (
	"fmt"
	"os"
)

func main() {
	switch os.Getenv("CNI_COMMAND") {
	case "ADD":
		fmt.Print(`{"cniVersion":"1.0.0","interfaces":[],"ips":[]}`)
	case "VERSION":
		fmt.Print(`{"cniVersion":"1.0.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}`)
	}
}
