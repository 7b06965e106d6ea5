package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/crypto/bcrypt"
)

// registryServer is a real CNCF distribution registry (Debian's
// docker-registry) on a loopback port, storing into a temp directory.
type registryServer struct {
	host    string // 127.0.0.1:PORT
	storage string
}

// registryOptions shape a registry's config.
type registryOptions struct {
	// proxyOf makes the registry a pull-through cache of that URL.
	proxyOf string
	// user and password, when set, require basic auth (htpasswd).
	user, password string
	// tls, when set, serves HTTPS with its certificate.
	tls *testCA
	// token, when set, requires tokens of that server (bearer auth).
	token *tokenServer
}

// startRegistry starts a registry and stops it when the test ends.
func startRegistry(t testing.TB, opts registryOptions) *registryServer {
	t.Helper()
	bin := testimage.RequireTool(t, "docker-registry")
	dir := t.TempDir()
	r := &registryServer{storage: filepath.Join(dir, "storage")}
	var extra, tlsConfig string
	scheme := "http"
	if opts.tls != nil {
		tlsConfig = fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", opts.tls.serverCert, opts.tls.serverKey)
		scheme = "https"
	}
	if opts.proxyOf != "" {
		extra += fmt.Sprintf("proxy:\n  remoteurl: %s\n", opts.proxyOf)
	}
	if opts.user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(opts.user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		extra += fmt.Sprintf("auth:\n  htpasswd:\n    realm: layerfs-test\n    path: %s\n", htpasswd)
	}
	if opts.token != nil {
		extra += fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n", opts.token.realm, tokenService, tokenService, opts.token.signer.cert)
	}
	// A free port can be taken by someone else before the registry binds
	// it; a registry that exits at once is started again on another.
	for attempt := 0; ; attempt++ {
		r.host = freeLoopbackAddr(t)
		config := filepath.Join(dir, "config.yml")
		yml := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n%s%s", r.storage, r.host, tlsConfig, extra)
		if err := os.WriteFile(config, []byte(yml), 0o600); err != nil {
			t.Fatal(err)
		}
		logFile, err := os.Create(filepath.Join(dir, "registry.log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", config)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); logFile.Close(); close(exited) }()
		if waitRegistry(scheme+"://"+r.host, exited) {
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-exited
			})
			return r
		}
		cmd.Process.Kill()
		<-exited
		if attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Fatalf("docker-registry did not start on %s:\n%s", r.host, log)
		}
	}
}

// waitRegistry polls the registry's API root at url until it answers, or
// the process exits, or 15 s pass.
func waitRegistry(url string, exited chan struct{}) bool {
	// Whether the registry answers is asked, not whom it trusts.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		resp, err := client.Get(url + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// testCA is a certificate authority made for one test, and a server
// certificate it signed for 127.0.0.1 and proxiedName, all as PEM files.
type testCA struct {
	cert, serverCert, serverKey string
	// key and der are the CA's own key and certificate.
	key *ecdsa.PrivateKey
	der []byte
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	dir := t.TempDir()
	ca := &testCA{cert: filepath.Join(dir, "ca.crt"), serverCert: filepath.Join(dir, "server.crt"), serverKey: filepath.Join(dir, "server.key")}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "layerfs test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca.key, ca.der = caKey, caDER
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serverTemplate := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{proxiedName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	serverDER, err := x509.CreateCertificate(rand.Reader, serverTemplate, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for file, block := range map[string]*pem.Block{
		ca.cert:       {Type: "CERTIFICATE", Bytes: caDER},
		ca.serverCert: {Type: "CERTIFICATE", Bytes: serverDER},
		ca.serverKey:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return ca
}

// proxiedName is a registry host no resolver knows, which only a
// registryProxy reaches.
const proxiedName = "registry.test"

// registryProxy is an HTTP proxy, as HTTPS_PROXY and HTTP_PROXY name one,
// that takes any host to a registry on loopback: a CONNECT tunnel for
// HTTPS, a forwarded request for plain HTTP. It counts what it carries.
type registryProxy struct {
	url               string
	tunnels, forwards atomic.Int64
}

func startRegistryProxy(t testing.TB, registry string) *registryProxy {
	t.Helper()
	p := &registryProxy{}
	forward := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: registry})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			p.forwards.Add(1)
			forward.ServeHTTP(w, r)
			return
		}
		p.tunnels.Add(1)
		upstream, err := net.Dial("tcp", registry)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer upstream.Close()
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
		go func() { io.Copy(upstream, rw); upstream.Close() }()
		io.Copy(conn, upstream)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// tokenService names the registry to its token server, and the server as
// the tokens' issuer.
const tokenService = "layerfs-test"

// tokenServer is a registry's token server, as docker.io has one: it
// gives the one user with the right password a JWT granting what the
// scope asks, signed by a CA the registry trusts, and refuses anyone
// else with 401.
type tokenServer struct {
	realm  string
	signer *testCA
	// issued counts the tokens given.
	issued atomic.Int64
}

func startTokenServer(t testing.TB, user, password string) *tokenServer {
	t.Helper()
	ts := &tokenServer{signer: newTestCA(t)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"wrong credentials"}]}`, http.StatusUnauthorized)
			return
		}
		token, err := ts.sign(user, r.URL.Query()["scope"])
		if err != nil {
			t.Errorf("token server: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		ts.issued.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"token": token})
	}))
	t.Cleanup(srv.Close)
	ts.realm = srv.URL + "/token"
	return ts
}

// sign makes a JWT (ES256, the signer's certificate in x5c) granting
// what each scope (repository:NAME:ACTIONS) asks.
func (ts *tokenServer) sign(subject string, scopes []string) (string, error) {
	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	grants := []access{}
	for _, scope := range scopes {
		for _, one := range strings.Split(scope, " ") {
			parts := strings.Split(one, ":")
			if len(parts) < 3 {
				return "", fmt.Errorf("scope %q", one)
			}
			grants = append(grants, access{parts[0], strings.Join(parts[1:len(parts)-1], ":"), strings.Split(parts[len(parts)-1], ",")})
		}
	}
	now := time.Now()
	header, err := json.Marshal(map[string]any{"typ": "JWT", "alg": "ES256", "x5c": []string{base64.StdEncoding.EncodeToString(ts.signer.der)}})
	if err != nil {
		return "", err
	}
	claims, err := json.Marshal(map[string]any{
		"iss": tokenService, "sub": subject, "aud": tokenService,
		"exp": now.Add(time.Hour).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprint(now.UnixNano()), "access": grants,
	})
	if err != nil {
		return "", err
	}
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, ts.signer.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + enc.EncodeToString(sig), nil
}

// freeLoopbackAddr is a loopback address nothing listens on right now.
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// push copies image ref of an OCI layout to a registry with skopeo copy,
// given extra options (--all, --dest-creds).
func push(t testing.TB, layout, ref, dest string, extra ...string) {
	t.Helper()
	args := append([]string{"--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"}, extra...)
	testimage.RunTool(t, "skopeo", append(args, "oci:"+layout+":"+ref, "docker://"+dest)...)
}

// fault is what the fault proxy does to one answer.
type fault struct {
	status  int   // answer with this status instead of forwarding
	cutAt   int64 // close the connection after this many body bytes (> 0)
	corrupt bool  // flip one byte of the body, keeping its length
}

// faultProxy is an HTTP reverse proxy between layerfs and a registry that
// counts the blob bytes it forwards and breaks answers as a test asks.
type faultProxy struct {
	host string
	// blobBytes are the blob body bytes sent to clients; ranged counts
	// blob requests that asked for a range.
	blobBytes, ranged atomic.Int64
	// rate, when > 0, limits blob bodies to that many bytes a second.
	rate atomic.Int64

	mu   sync.Mutex
	seen map[string]int
	// faults decides, for the n-th request (from 1) of a path, what to
	// break; nil forwards everything.
	faults func(path string, n int) fault
}

func startFaultProxy(t testing.TB, upstream string) *faultProxy {
	t.Helper()
	p := &faultProxy{seen: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.serve(t, upstream, w, r)
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func (p *faultProxy) setFaults(fn func(path string, n int) fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults, p.seen = fn, map[string]int{}
}

func (p *faultProxy) serve(t testing.TB, upstream string, w http.ResponseWriter, r *http.Request) {
	blob := r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:")
	var f fault
	p.mu.Lock()
	p.seen[r.URL.Path]++
	if p.faults != nil {
		f = p.faults(r.URL.Path, p.seen[r.URL.Path])
	}
	p.mu.Unlock()
	if blob && r.Header.Get("Range") != "" {
		p.ranged.Add(1)
	}
	if f.status != 0 {
		if f.status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "0")
		}
		http.Error(w, http.StatusText(f.status), f.status)
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, "http://"+upstream+r.URL.RequestURI(), nil)
	if err != nil {
		t.Errorf("fault proxy: %v", err)
		return
	}
	out.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	if !blob {
		io.Copy(w, resp.Body)
		return
	}
	buf := make([]byte, 32<<10)
	var sent int64
	start := time.Now()
	for {
		n, err := resp.Body.Read(buf)
		if f.cutAt > 0 && sent+int64(n) >= f.cutAt {
			n = int(f.cutAt - sent)
		}
		if f.corrupt && n > 0 && sent == 0 {
			buf[n/2] ^= 0xff
		}
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			sent += int64(n)
			p.blobBytes.Add(int64(n))
		}
		if f.cutAt > 0 && sent >= f.cutAt {
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		if err != nil {
			return
		}
		if rate := p.rate.Load(); rate > 0 {
			w.(http.Flusher).Flush()
			if ahead := time.Duration(sent)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
}
