package sandpool_test

// TLS and bearer tokens against a second real server: certificates made
// for the test by the openssl CLI (a CA, and a server certificate for
// localhost and 127.0.0.1).

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	sandpool "github.com/sandpool/sandpool/clients/go"
)

func makeCertificates(t *testing.T, dir string) {
	t.Helper()
	openssl := func(args ...string) {
		cmd := exec.Command("openssl", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl %v: %v\n%s", args, err, out)
		}
	}
	// P-256 keys: quick to make.
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"}
	openssl(append(append([]string{"req", "-x509"}, ec...), "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=sandpool-go-test-ca")...)
	openssl(append(append([]string{"req"}, ec...), "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=server")...)
	if err := os.WriteFile(filepath.Join(dir, "server.ext"), []byte("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
		"-out", "server.pem", "-days", "1", "-extfile", "server.ext")
}

func TestTLSAndToken(t *testing.T) {
	dir := t.TempDir()
	makeCertificates(t, dir)
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	const token = "go-test-token"
	srv, err := startServer(serverOptions{
		config: "[auth]\ntokens = [\"" + token + "\"]\n",
		flags:  []string{"--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server.key")},
		client: sandpool.Options{Token: token, TLS: tlsClient(t, ca, "")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.stop(); err != nil {
			t.Error(err)
		}
	}()
	ctx := context.Background()
	// The probe already listed pools over TLS with the token; again, by name.
	byName := srv.client(t, func(o *sandpool.Options) { o.TLS = tlsClient(t, ca, "localhost") })
	if _, err := byName.ListPools(ctx); err != nil {
		t.Fatalf("TLS with the token: %v", err)
	}
	noToken := srv.client(t, func(o *sandpool.Options) { o.Token = "" })
	if _, err := noToken.ListPools(ctx); !errors.Is(err, sandpool.ErrUnauthenticated) {
		t.Fatalf("without the token: %v", err)
	}
	wrong := srv.client(t, func(o *sandpool.Options) { o.Token = "wrong" })
	if _, err := wrong.ListPools(ctx); !errors.Is(err, sandpool.ErrUnauthenticated) {
		t.Fatalf("with a wrong token: %v", err)
	}
	for name, opts := range map[string]func(*sandpool.Options){
		"plaintext":         func(o *sandpool.Options) { o.TLS = nil; o.Timeout = 5 * time.Second },
		"untrusted CA":      func(o *sandpool.Options) { o.TLS = tlsClient(t, nil, ""); o.Timeout = 5 * time.Second },
		"wrong server name": func(o *sandpool.Options) { o.TLS = tlsClient(t, ca, "sandpool.example"); o.Timeout = 5 * time.Second },
	} {
		c := srv.client(t, opts)
		t0 := time.Now()
		if _, err := c.ListPools(ctx); !errors.Is(err, sandpool.ErrUnavailable) {
			t.Fatalf("%s: %v", name, err)
		}
		if took := time.Since(t0); took > 4*time.Second {
			t.Fatalf("%s took %s to fail", name, took)
		}
	}
}
