package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"
)

// dialTimeout bounds how long an unreachable host takes to be named as
// such; connecting is never retried, so this is the whole wait.
const dialTimeout = 5 * time.Second

// idleTimeout ends a response whose body has sent nothing for that long,
// which net/http would otherwise wait on forever (it bounds only the
// wait for headers): a blob fetch then resumes, and a manifest, config
// or token fails saying so, rather than holding pull forever.
var idleTimeout = 30 * time.Second

// errStalled is a response that stopped sending for idleTimeout.
var errStalled = errors.New("the registry stopped sending")

// stallTransport gives every response body idleTimeout between reads.
type stallTransport struct{ base http.RoundTripper }

func (s stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := s.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(nil)
		return nil, err
	}
	wait := idleTimeout
	stalled := fmt.Errorf("%w: no data for %v", errStalled, wait)
	body := &stallBody{ReadCloser: resp.Body, ctx: ctx, cancel: cancel, wait: wait}
	body.idle = time.AfterFunc(wait, func() { cancel(stalled) })
	resp.Body = body
	return resp, nil
}

type stallBody struct {
	io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   *time.Timer
	wait   time.Duration
}

func (b *stallBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.idle.Reset(b.wait)
	}
	if err != nil && err != io.EOF {
		if cause := context.Cause(b.ctx); errors.Is(cause, errStalled) {
			err = cause
		}
	}
	return n, err
}

func (b *stallBody) Close() error {
	b.idle.Stop()
	err := b.ReadCloser.Close()
	b.cancel(nil)
	return err
}

// Config is the registries' configuration file: mirrors to try, in order,
// before the registry itself.
//
//	{"mirrors": {"docker.io": ["127.0.0.1:5001", "cache.local:5000"]}}
type Config struct {
	Mirrors map[string][]string `json:"mirrors"`
}

// LoadConfig reads a registries configuration file.
func LoadConfig(path string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("registries config: %w", err)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("registries config %s: %w", path, err)
	}
	return c, nil
}

// client is the HTTP stack every registry is reached through: auth
// (anonymous, basic, bearer tokens; docker's credentials) over retries
// (429, 5xx, connections reset) over one pooled transport.
type client struct {
	auth     *auth.Client
	insecure bool
	// credentialFiles are where credentials are read from, in order.
	credentialFiles []credentialFile

	mu     sync.Mutex
	scheme map[string]bool // host -> plain HTTP, for loopback and --insecure hosts
}

func newClient(insecure bool, jobs int) (*client, error) {
	files, err := credentialFiles()
	if err != nil {
		return nil, err
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.DialContext = (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext
	base.TLSHandshakeTimeout = 10 * time.Second
	base.ResponseHeaderTimeout = time.Minute
	base.MaxIdleConnsPerHost = jobs + 2
	// Layers are compressed already; asking for gzip again would only cost.
	base.DisableCompression = true
	if insecure {
		base.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	}
	rt := retry.NewTransport(stallTransport{&hostTransports{base: base, byHost: map[string]http.RoundTripper{}}})
	rt.Policy = func() retry.Policy { return retryPolicy }
	c := &client{
		insecure:        insecure,
		credentialFiles: files,
		scheme:          map[string]bool{},
	}
	c.auth = &auth.Client{
		Client: &http.Client{Transport: rt},
		Cache:  auth.NewCache(),
		Credential: func(ctx context.Context, host string) (auth.Credential, error) {
			cred, _, err := c.credential(ctx, host)
			return cred, err
		},
	}
	return c, nil
}

// credentialFile is a file credentials are read from, with the
// credential helpers it names.
type credentialFile struct {
	path  string
	store credentials.Store
	// key is what the file keys a host's credentials by.
	key func(host string) string
}

// credentialFiles are docker's config.json and then containers' auth.json,
// which podman login and skopeo login write instead: a registry docker's
// has nothing for is looked up there.
func credentialFiles() ([]credentialFile, error) {
	docker, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("docker credentials: %w", err)
	}
	files := []credentialFile{{docker.ConfigPath(), docker, credentials.ServerAddressFromHostname}}
	for _, path := range containersAuthFiles() {
		s, err := credentials.NewStore(path, credentials.StoreOptions{})
		if err != nil {
			return nil, fmt.Errorf("containers credentials: %w", err)
		}
		files = append(files, credentialFile{path, s, containersKey})
	}
	return files, nil
}

// credential is host's credential from the first file that has one, and
// that file.
func (c *client) credential(ctx context.Context, host string) (auth.Credential, string, error) {
	for _, f := range c.credentialFiles {
		cred, err := f.store.Get(ctx, f.key(host))
		if err != nil {
			return auth.EmptyCredential, f.path, fmt.Errorf("credentials of %s from %s: %w", host, f.path, err)
		}
		if cred != auth.EmptyCredential {
			return cred, f.path, nil
		}
	}
	return auth.EmptyCredential, "", nil
}

// containersKey is what containers' auth.json keys host's credentials
// by: podman login docker.io writes docker.io, where docker login writes
// the URL of docker's index.
func containersKey(host string) string {
	if host == dockerHubEndpoint {
		return dockerHub
	}
	return host
}

// containersAuthFiles are the auth.json files podman and skopeo read:
// $REGISTRY_AUTH_FILE alone when set, else the one login writes and the
// one under the user's configuration.
func containersAuthFiles() []string {
	if path := os.Getenv("REGISTRY_AUTH_FILE"); path != "" {
		return []string{path}
	}
	login := fmt.Sprintf("/run/containers/%d/auth.json", os.Getuid())
	if runtime := os.Getenv("XDG_RUNTIME_DIR"); runtime != "" {
		login = filepath.Join(runtime, "containers", "auth.json")
	}
	files := []string{login}
	if config, err := os.UserConfigDir(); err == nil {
		files = append(files, filepath.Join(config, "containers", "auth.json"))
	}
	return files
}

// certDirs hold, as docker and podman read them, the CAs a registry is
// trusted by beside the system's: DIR/HOST[:PORT]/*.crt.
var certDirs = []string{"/etc/docker/certs.d", "/etc/containers/certs.d"}

// hostTransports sends each request through the transport of its host:
// the shared one, or, for a host with CAs of its own in certDirs, a copy
// of it that trusts them too.
type hostTransports struct {
	base *http.Transport

	mu     sync.Mutex
	byHost map[string]http.RoundTripper
}

func (h *hostTransports) RoundTrip(req *http.Request) (*http.Response, error) {
	return h.forHost(req.URL.Host).RoundTrip(req)
}

func (h *hostTransports) forHost(host string) http.RoundTripper {
	h.mu.Lock()
	defer h.mu.Unlock()
	if rt, ok := h.byHost[host]; ok {
		return rt
	}
	var rt http.RoundTripper = h.base
	if cas := hostCAs(host); cas != nil {
		t := h.base.Clone()
		if t.TLSClientConfig == nil {
			t.TLSClientConfig = &tls.Config{}
		}
		t.TLSClientConfig.RootCAs = cas
		rt = t
	}
	h.byHost[host] = rt
	return rt
}

// hostCAs is the system's CAs and those certDirs hold for host, or nil
// when they hold none. A file that holds no certificate is skipped with a
// warning: the registry's certificate then fails to verify, and the
// warning says why.
func hostCAs(host string) *x509.CertPool {
	var files []string
	for _, dir := range certDirs {
		// Not a glob: an IPv6 host's brackets would be read as a pattern.
		entries, _ := os.ReadDir(filepath.Join(dir, host))
		for _, e := range entries {
			if !e.IsDir() && strings.HasSuffix(e.Name(), ".crt") {
				files = append(files, filepath.Join(dir, host, e.Name()))
			}
		}
	}
	if len(files) == 0 {
		return nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	for _, file := range files {
		pem, err := os.ReadFile(file)
		if err == nil && !pool.AppendCertsFromPEM(pem) {
			err = errors.New("no PEM certificate in it")
		}
		if err != nil {
			logrus.WithFields(logrus.Fields{"registry": host, "file": file, "error": err}).Warn("skipping a registry CA")
		}
	}
	return pool
}

// retryPolicy is oras' default, except that a host that cannot be
// connected to is reported at once instead of after minutes of retries.
var retryPolicy = &retry.GenericPolicy{
	Retryable: func(resp *http.Response, err error) (bool, error) {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return false, err
		}
		return retry.DefaultPredicate(resp, err)
	},
	Backoff:  retry.DefaultBackoff,
	MinWait:  200 * time.Millisecond,
	MaxWait:  3 * time.Second,
	MaxRetry: 5,
}

// isLoopback reports whether host (with an optional port) is this
// machine, which docker reaches over plain HTTP without being told.
func isLoopback(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// repository is repo at host, over plain HTTP for loopback hosts and
// --insecure hosts that do not answer TLS.
func (c *client) repository(ctx context.Context, host, repo string) (*remote.Repository, error) {
	plain, err := c.plainHTTP(ctx, host)
	if err != nil {
		return nil, err
	}
	if host == dockerHub {
		host = dockerHubEndpoint
	}
	return &remote.Repository{
		Client:    c.auth,
		Reference: registry.Reference{Registry: host, Repository: repo},
		PlainHTTP: plain,
	}, nil
}

// answersTLS reports whether host completes a TLS handshake, whatever
// its certificate: a loopback registry that does is verified like any
// other, as docker does, instead of being spoken to in plain HTTP it
// cannot answer.
func answersTLS(ctx context.Context, host string) bool {
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "443")
	}
	d := tls.Dialer{
		NetDialer: &net.Dialer{Timeout: dialTimeout},
		// Only whether TLS is spoken is asked here; the requests verify.
		Config: &tls.Config{InsecureSkipVerify: true},
	}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// docker.io names images, but its registry API answers at another host, as
// every docker client knows; its credentials are stored under that host.
const (
	dockerHub         = "docker.io"
	dockerHubEndpoint = "registry-1.docker.io"
)

func (c *client) plainHTTP(ctx context.Context, host string) (bool, error) {
	loopback := isLoopback(host)
	if !loopback && !c.insecure {
		return false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if plain, ok := c.scheme[host]; ok {
		return plain, nil
	}
	if loopback {
		plain := !answersTLS(ctx, host)
		c.scheme[host] = plain
		return plain, nil
	}
	reg, err := remote.NewRegistry(host)
	if err != nil {
		return false, fmt.Errorf("registry %s: %w", host, err)
	}
	reg.Client = c.auth
	err = reg.Ping(ctx)
	plain := errors.Is(err, http.ErrSchemeMismatch)
	if plain {
		logrus.WithField("registry", host).Info("no TLS: using plain HTTP (--insecure)")
	}
	c.scheme[host] = plain
	return plain, nil
}
