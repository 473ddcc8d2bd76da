package sandpool_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"

	sandpool "github.com/sandpool/sandpool/clients/go"
)

// Run by the tests against the shared server ($SANDPOOL_ADDR, pool
// "python"), so the output below is checked.
func Example() {
	ctx := context.Background()
	client, err := sandpool.Dial("", sandpool.Options{}) // $SANDPOOL_ADDR, else 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	session, err := client.Acquire(ctx, "python", nil)
	if errors.Is(err, sandpool.ErrNotFound) {
		log.Fatal("no pool named python")
	} else if err != nil {
		log.Fatal(err)
	}
	defer session.Close()

	stream, err := session.Run(ctx, sandpool.Code("for i in range(3): print(i)"), nil)
	if err != nil {
		log.Fatal(err)
	}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		switch e := ev.(type) {
		case *sandpool.Stdout:
			fmt.Printf("%s", e.Data)
		case *sandpool.Exit:
			fmt.Println("exit", e.ExitCode, e.EndReason)
		}
	}
	// Output:
	// 0
	// 1
	// 2
	// exit 0 END_REASON_EXITED
}
