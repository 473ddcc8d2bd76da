package sandpool_test

// The Go client on a Kubernetes pool, against a real sandpool server whose
// Kubernetes backend talks to the test API server (tests/k8s-apiserver,
// binary k8s-testserver: a stand-in for a cluster, which cannot run on the
// test machines; each pod it is asked for is a real Docker container, so
// the code below really runs). The full suites stay on Docker; this is the
// short pass on Kubernetes.

import (
	"bufio"
	"context"
	"fmt"
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

// apiServer is a running k8s-testserver.
type apiServer struct {
	cmd      *exec.Cmd
	exited   chan struct{}
	instance string
	// config is the `[kubernetes]` section of a sandpool server whose
	// pools go here.
	config string
}

func startAPIServer(t *testing.T, namespace string) *apiServer {
	t.Helper()
	// Beside the server binary (the workspace build makes both).
	server := os.Getenv("SANDPOOL_SERVER_BIN")
	if server == "" {
		root, err := repoRoot()
		if err != nil {
			t.Fatal(err)
		}
		server = filepath.Join(root, "target", "debug", "sandpool-server")
	}
	bin := filepath.Join(filepath.Dir(server), "k8s-testserver")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s is missing: run `cargo build -p sandpool-k8s-testserver` (test.sh does): %v", bin, err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	a := &apiServer{
		exited:   make(chan struct{}),
		instance: fmt.Sprintf("go-k8s-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9),
	}
	a.cmd = exec.Command(bin, "--kubeconfig", kubeconfig, "--namespace", namespace, "--instance-id", a.instance)
	log, err := os.Create(filepath.Join(dir, "k8s-testserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	a.cmd.Stderr = log
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = a.cmd.Wait()
		log.Close()
		close(a.exited)
	}()
	// It prints its URL alone on stdout once it serves.
	url := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		url <- strings.TrimSpace(line)
	}()
	select {
	case u := <-url:
		if !strings.HasPrefix(u, "http") {
			data, _ := os.ReadFile(log.Name())
			t.Fatalf("the test API server did not start:\n%s", data)
		}
	case <-time.After(60 * time.Second):
		_ = a.cmd.Process.Kill()
		t.Fatal("the test API server printed no URL within 60 s")
	}
	a.config = fmt.Sprintf("[kubernetes]\nkubeconfig = %q\nnamespace = %q\n", kubeconfig, namespace)
	return a
}

// pods lists `namespace/name` of sandpool server serverID's pods, as the
// API server's Docker containers record them.
func (a *apiServer) pods(serverID string) ([]string, error) {
	out, err := exec.Command("docker", "ps", "-a",
		"--filter", "label=k8s-testserver.instance="+a.instance,
		"--filter", "label=k8s-testserver.label.sandpool.server="+serverID,
		"--format", `{{.Label "k8s-testserver.pod"}}`).Output()
	if err != nil {
		return nil, fmt.Errorf("docker ps: %w", err)
	}
	return strings.Fields(string(out)), nil
}

// stop SIGTERMs it: it removes every container it created, then exits.
func (a *apiServer) stop() {
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(60 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
}

func TestKubernetesPool(t *testing.T) {
	api := startAPIServer(t, "go-kube")
	defer api.stop()
	server, err := startServer(serverOptions{config: api.config})
	if err != nil {
		t.Fatal(err)
	}
	serverID := server.serverID
	defer func() {
		if err := server.stop(); err != nil {
			t.Error(err)
		}
		if pods, err := api.pods(serverID); err != nil || len(pods) != 0 {
			t.Errorf("pods left after the server stopped: %v %v", pods, err)
		}
	}()
	c := server.client(t, nil)
	ctx := context.Background()
	spec := pythonSpec("kube", 1, 1)
	spec.Backend = pb.Backend_BACKEND_KUBERNETES
	createCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := c.CreatePool(createCtx, spec, &sandpool.CreatePoolOptions{WaitReady: true}); err != nil {
		t.Fatalf("create a Kubernetes pool: %v", err)
	}
	pods, err := api.pods(serverID)
	if err != nil || len(pods) != 1 || !strings.HasPrefix(pods[0], "go-kube/") {
		t.Fatalf("the pool's pods: %v %v", pods, err)
	}

	s, err := c.Acquire(ctx, "kube", nil)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	if !strings.HasSuffix(pods[0], "/"+s.Lease().ContainerID) {
		t.Fatalf("the lease holds %q, the pool's pod is %q", s.Lease().ContainerID, pods[0])
	}
	// Output, stdin, the sandbox user, no network, an exit code.
	r, err := s.RunCollect(ctx, sandpool.Shell("id -u; cat; ls /sys/class/net; exit 3"),
		&sandpool.RunOptions{Stdin: []byte("from stdin\n")})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if r.StdoutText() != "1000\nfrom stdin\nlo\n" || r.ExitCode != 3 || r.EndReason != sandpool.EndExited {
		t.Fatalf("result %+v (stderr %q)", r, r.StderrText())
	}
	// A timeout ends the run and its tree.
	started := time.Now()
	r, err = s.RunCollect(ctx, sandpool.Code("import time\ntime.sleep(60)"), &sandpool.RunOptions{Timeout: time.Second})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if r.EndReason != sandpool.EndTimeout || time.Since(started) > 15*time.Second {
		t.Fatalf("a 1 s timeout: %+v after %v", r, time.Since(started))
	}
	// Files both ways.
	if _, err := s.Upload(ctx, "/sandbox/in.txt", []byte("hello pod"), nil); err != nil {
		t.Fatalf("upload: %v", err)
	}
	r, err = s.RunCollect(ctx, sandpool.Code("open('/sandbox/out.txt', 'w').write(open('/sandbox/in.txt').read().upper())"), nil)
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("run: %v %+v", err, r)
	}
	d, err := s.Download(ctx, "/sandbox/out.txt")
	if err != nil || string(d.Data) != "HELLO POD" {
		t.Fatalf("download: %v %+v", err, d)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("release: %v", err)
	}
	// The reset cleared the pod for the next lease.
	s, err = c.Acquire(ctx, "kube", nil)
	if err != nil {
		t.Fatalf("acquire again: %v", err)
	}
	r, err = s.RunCollect(ctx, sandpool.Shell("ls -A /sandbox"), nil)
	if err != nil || strings.Contains(r.StdoutText(), "in.txt") {
		t.Fatalf("the next lease sees the last one's files: %v %q", err, r.StdoutText())
	}
	if err := s.Close(); err != nil {
		t.Fatalf("release: %v", err)
	}
	if _, err := c.DeletePool(ctx, "kube", true); err != nil {
		t.Fatalf("delete: %v", err)
	}
}
