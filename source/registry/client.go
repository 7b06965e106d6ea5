package registry

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
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

	mu     sync.Mutex
	scheme map[string]bool // host -> plain HTTP, for --insecure hosts
}

func newClient(insecure bool, jobs int) (*client, error) {
	creds, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("docker credentials: %w", err)
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
	rt := retry.NewTransport(base)
	rt.Policy = func() retry.Policy { return retryPolicy }
	return &client{
		auth: &auth.Client{
			Client:     &http.Client{Transport: rt},
			Cache:      auth.NewCache(),
			Credential: credentials.Credential(creds),
		},
		insecure: insecure,
		scheme:   map[string]bool{},
	}, nil
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

// repository is repo at host, over plain HTTP for loopback hosts, and for
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

// docker.io names images, but its registry API answers at another host, as
// every docker client knows; its credentials are stored under that host.
const (
	dockerHub         = "docker.io"
	dockerHubEndpoint = "registry-1.docker.io"
)

func (c *client) plainHTTP(ctx context.Context, host string) (bool, error) {
	if isLoopback(host) {
		return true, nil
	}
	if !c.insecure {
		return false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if plain, ok := c.scheme[host]; ok {
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
