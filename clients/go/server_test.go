package sandpool_test

// The test server: a real sandpool-server (target/debug/sandpool-server,
// built by test.sh) on a free port with a unique server id, waited for by
// polling, stopped with SIGTERM; stopping checks that it exited cleanly and
// that no container labelled with its id is left on the engine.

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	sandpool "github.com/sandpool/sandpool/clients/go"
	pb "github.com/sandpool/sandpool/clients/go/sandpoolv1"
)

// pythonImage is the sandbox image the tests use (built by
// scripts/build-images.sh; never pulled).
const pythonImage = "sandpool/python:bookworm"

type serverOptions struct {
	// Extra TOML for the server's config.
	config string
	// Extra flags (TLS).
	flags []string
	// Client options of the readiness probe and of client().
	client sandpool.Options
}

type testServer struct {
	// dir holds the config and the log; removed after a clean stop.
	dir      string
	addr     string
	serverID string
	logPath  string
	cmd      *exec.Cmd
	exited   chan struct{}
	opts     serverOptions
}

// shared is the server of most tests (and of the examples, through
// $SANDPOOL_ADDR), with the pool `pool` on it: named as the examples
// expect it (each test server starts with no pool).
var (
	shared *testServer
	pool   = "python"
)

func repoRoot() (string, error) {
	if r := os.Getenv("SANDPOOL_REPO"); r != "" {
		return r, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	// The package is reached through a GOPATH link: resolve it first.
	real, err := filepath.EvalSymlinks(wd)
	if err != nil {
		return "", err
	}
	return filepath.Join(real, "..", ".."), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startServer(opts serverOptions) (*testServer, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	bin := os.Getenv("SANDPOOL_SERVER_BIN")
	if bin == "" {
		bin = filepath.Join(root, "target", "debug", "sandpool-server")
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("%s is missing: run `cargo build -p sandpool-server` (test.sh does): %w", bin, err)
	}
	dir, err := os.MkdirTemp("", "sandpool-go-")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &testServer{
		dir:      dir,
		addr:     fmt.Sprintf("127.0.0.1:%d", port),
		serverID: fmt.Sprintf("go-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9),
		logPath:  filepath.Join(dir, "server.log"),
		exited:   make(chan struct{}),
		opts:     opts,
	}
	config := filepath.Join(dir, "server.toml")
	if err := os.WriteFile(config, []byte("shutdown_grace = 2\n"+opts.config+"\n"), 0o644); err != nil {
		return nil, err
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"--listen", s.addr, "--config", config, "--server-id", s.serverID}, opts.flags...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// The server reads SANDPOOL_* variables: give it none of ours.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SANDPOOL_") && !strings.HasPrefix(kv, "RUST_LOG=") {
			s.cmd.Env = append(s.cmd.Env, kv)
		}
	}
	s.cmd.Env = append(s.cmd.Env, "RUST_LOG=info")
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = s.cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	probeOpts := opts.client
	probeOpts.Timeout = time.Second
	probe, err := sandpool.Dial(s.addr, probeOpts)
	if err != nil {
		return nil, err
	}
	defer probe.Close()
	err = waitFor(30*time.Second, func() (bool, error) {
		select {
		case <-s.exited:
			return false, fmt.Errorf("sandpool-server exited early:\n%s", s.logTail())
		default:
		}
		_, err := probe.ListPools(context.Background())
		return err == nil, nil
	})
	if err != nil {
		_ = s.cmd.Process.Kill()
		return nil, fmt.Errorf("the server did not answer ListPools: %w", err)
	}
	return s, nil
}

func (s *testServer) client(t testing.TB, extra func(*sandpool.Options)) *sandpool.Client {
	t.Helper()
	opts := s.opts.client
	opts.Timeout = 15 * time.Second
	if extra != nil {
		extra(&opts)
	}
	c, err := sandpool.Dial(s.addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *testServer) logTail() string {
	data, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

// stop SIGTERMs the server and checks that it exited 0 and left no
// container behind.
func (s *testServer) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(40 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("sandpool-server ignored SIGTERM for 40 s:\n%s", s.logTail())
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("sandpool-server exited with %d:\n%s", code, s.logTail())
	}
	left, err := containersOf(s.serverID)
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("containers of server %s left behind: %v", s.serverID, left)
	}
	return os.RemoveAll(s.dir)
}

func containersOf(serverID string) ([]string, error) {
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=sandpool.server="+serverID).Output()
	if err != nil {
		return nil, fmt.Errorf("docker ps: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// waitFor polls check every 50 ms until it says done, fails, or timeout
// passes.
func waitFor(timeout time.Duration, check func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func uint32p(v uint32) *uint32 { return &v }

func pythonSpec(name string, min, max uint32) *pb.PoolSpec {
	return &pb.PoolSpec{
		Name: name, Language: "python", Image: pythonImage,
		Config: &pb.PoolConfig{MinPoolSize: uint32p(min), MaxPoolSize: uint32p(max)},
	}
}

func TestMain(m *testing.M) {
	flag.Parse()
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandpool tests:", err)
		code = 1
	}
	os.Exit(code)
}

func run(m *testing.M) (code int, err error) {
	shared, err = startServer(serverOptions{})
	if err != nil {
		return 1, err
	}
	defer func() {
		if stopErr := shared.stop(); stopErr != nil && err == nil {
			err = stopErr
		}
	}()
	if err := os.Setenv("SANDPOOL_ADDR", shared.addr); err != nil {
		return 1, err
	}
	c, err := sandpool.Dial(shared.addr, sandpool.Options{Timeout: 120 * time.Second})
	if err != nil {
		return 1, err
	}
	defer c.Close()
	if _, err := c.CreatePool(context.Background(), pythonSpec(pool, 2, 4), &sandpool.CreatePoolOptions{WaitReady: true}); err != nil {
		return 1, fmt.Errorf("creating the test pool: %w", err)
	}
	return m.Run(), nil
}

// tlsClient is the TLS config that trusts the test CA in dir.
func tlsClient(t testing.TB, caPEM []byte, serverName string) *tls.Config {
	t.Helper()
	cfg, err := sandpool.TLSConfig(caPEM, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = serverName
	return cfg
}
