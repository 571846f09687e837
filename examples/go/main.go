// Command resource-service is a small resource service in Go that holds customer records and
// hands them out masked by the PII Key Broker's central rules, with go-jose v2 and the
// standard library only (net/http, compress/zlib):
//
//  1. The presented key (`Authorization: Bearer <key>`, or `DPoP <key>` with a `DPoP` proof
//     header) is verified from the broker's JWKS: an alg among the allowed ones, typ at+jwt,
//     a kid naming a published key, the signature, iss = the broker, aud = this service's own
//     id, exp/nbf with a small leeway (RFC 9068 §4).
//  2. Its revocation is checked on the Token Status List the key names
//     (status.status_list.{idx,uri}, draft-ietf-oauth-status-list): the statuslist+jwt is
//     fetched, verified with the same JWKS (typ statuslist+jwt, sub = the uri), inflated, and
//     bit idx read (least significant bit first). The list is cached no longer than its ttl
//     and the response's Cache-Control max-age allow; when no fresh list can be had the key
//     is refused (fail closed).
//  3. The record is sent with the key to the broker's POST /v1/mask, authenticated as this
//     service (HTTP Basic client id and secret); the broker checks the key again and masks
//     every field the key does not grant. We return what it returns.
//
// Configuration (environment), as for examples/node: BROKER_URL, SERVICE_ID, SERVICE_SECRET,
// HOST (127.0.0.1), PORT (8080; 0 picks a free one), PUBLIC_URL, DATA_FILE (default
// ../records.json), ALGORITHMS (EdDSA,ES256,RS256), JWKS_URL.
//
// Routes: GET /records/{id} and GET /healthz. Refusals: 401 invalid_token with a reason, 503
// when the status list or the JWKS cannot be had. Keys and record values are never logged.
package main

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	jose "gopkg.in/square/go-jose.v2"
	"gopkg.in/square/go-jose.v2/jwt"
)

const (
	leeway       = 5 * time.Second
	fetchTimeout = 5 * time.Second
	maxListBytes = 1 << 24 // a decompressed list larger than 16 MiB is refused
	jwksCooldown = 10 * time.Second
	jwksMaxAge   = 10 * time.Minute
)

type config struct {
	brokerURL, serviceID, serviceSecret, publicURL, jwksURL string
	algorithms                                              []string
	data                                                    dataFile
}

// dataFile holds the records this service serves and how their JSON paths map to catalogued
// fields (null: not personal data).
type dataFile struct {
	Default string                     `json:"default"`
	Paths   map[string]*string         `json:"paths"`
	Records map[string]json.RawMessage `json:"records"`
}

// refusal is why a request was refused: the HTTP status, the RFC 6750 error and a short
// machine-readable reason.
type refusal struct {
	status       int
	code, reason string
	description  string
}

func (r *refusal) Error() string { return r.description }

func invalid(reason, format string, args ...interface{}) *refusal {
	return &refusal{http.StatusUnauthorized, "invalid_token", reason, fmt.Sprintf(format, args...)}
}

func unavailable(reason, format string, args ...interface{}) *refusal {
	return &refusal{http.StatusServiceUnavailable, "temporarily_unavailable", reason, fmt.Sprintf(format, args...)}
}

var client = &http.Client{
	Timeout:       fetchTimeout,
	CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("no redirects") },
}

// ---- the JWKS ------------------------------------------------------------------------------

// keySet caches the broker's JWKS; an unknown kid refetches it (at most every jwksCooldown),
// so a rotation's new key is found without a restart.
type keySet struct {
	url     string
	mu      sync.Mutex
	set     jose.JSONWebKeySet
	fetched time.Time
}

func (k *keySet) fetch() error {
	resp, err := client.Get(k.url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return err
	}
	k.set, k.fetched = set, time.Now()
	return nil
}

func (k *keySet) key(kid string) (*jose.JSONWebKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	stale := time.Since(k.fetched) > jwksMaxAge
	if len(k.set.Key(kid)) == 0 && time.Since(k.fetched) > jwksCooldown || stale {
		if err := k.fetch(); err != nil && (stale || k.fetched.IsZero()) {
			return nil, unavailable("jwks-unavailable", "jwks: %v", err)
		}
	}
	keys := k.set.Key(kid)
	if len(keys) != 1 {
		return nil, invalid("unknown-key", "kid %q names %d published keys", kid, len(keys))
	}
	return &keys[0], nil
}

// verified checks a compact JWS signed by the broker: one signature, an allowed alg, the
// expected typ, a published kid whose alg agrees; it fills claims and returns them.
func (s *service) verified(token, typ string, registered *jwt.Claims, all interface{}) error {
	parsed, err := jwt.ParseSigned(token)
	if err != nil {
		return invalid("malformed", "parse: %v", err)
	}
	if len(parsed.Headers) != 1 {
		return invalid("malformed", "expected one signature")
	}
	header := parsed.Headers[0]
	allowed := false
	for _, alg := range s.cfg.algorithms {
		allowed = allowed || header.Algorithm == alg
	}
	if !allowed {
		return invalid("algorithm", "alg %q is not among %v", header.Algorithm, s.cfg.algorithms)
	}
	got, _ := header.ExtraHeaders[jose.HeaderType].(string)
	if !strings.EqualFold(got, typ) && !strings.EqualFold(got, "application/"+typ) {
		return invalid("type", "typ %q is not %s", got, typ)
	}
	key, err := s.keys.key(header.KeyID)
	if err != nil {
		return err
	}
	if key.Algorithm != "" && key.Algorithm != header.Algorithm {
		return invalid("algorithm", "the key's alg %q differs from %q", key.Algorithm, header.Algorithm)
	}
	if err := parsed.Claims(key.Key, registered, all); err != nil {
		return invalid("signature", "signature: %v", err)
	}
	return nil
}

// ---- 1. the key ----------------------------------------------------------------------------

type keyClaims struct {
	Cnf *struct {
		Jkt string `json:"jkt"`
	} `json:"cnf"`
	Status *struct {
		StatusList *struct {
			Idx *int64 `json:"idx"`
			URI string `json:"uri"`
		} `json:"status_list"`
	} `json:"status"`
}

func (s *service) verifyKey(token string) (*jwt.Claims, *keyClaims, error) {
	var registered jwt.Claims
	var extra keyClaims
	if err := s.verified(token, "at+jwt", &registered, &extra); err != nil {
		return nil, nil, err
	}
	if registered.Expiry == nil || registered.ID == "" {
		return nil, nil, invalid("claims", "the key has no exp or jti")
	}
	expected := jwt.Expected{Issuer: s.cfg.brokerURL, Time: time.Now()}
	if err := registered.ValidateWithLeeway(expected, leeway); err != nil {
		return nil, nil, invalid(claimReason(err), "claims: %v", err)
	}
	// go-jose's Audience check passes when any one expected audience is named; ours is one.
	if !registered.Audience.Contains(s.cfg.serviceID) {
		return nil, nil, invalid("audience", "the key is not for %s", s.cfg.serviceID)
	}
	return &registered, &extra, nil
}

func claimReason(err error) string {
	switch err {
	case jwt.ErrExpired:
		return "expired"
	case jwt.ErrNotValidYet:
		return "not-yet-valid"
	case jwt.ErrInvalidIssuer:
		return "issuer"
	}
	return "claims"
}

// ---- 2. the status list --------------------------------------------------------------------

type statusList struct {
	bits       uint
	bytes      []byte
	freshUntil time.Time
}

type listClaims struct {
	TTL        *float64 `json:"ttl"`
	StatusList *struct {
		Bits uint   `json:"bits"`
		Lst  string `json:"lst"`
	} `json:"status_list"`
}

// lifetime is how long a fetched list may be used: the least of its ttl, the response's
// max-age and its exp; no-store/no-cache, or none of them, means not at all.
func lifetime(ttl *float64, exp *jwt.NumericDate, cacheControl string) time.Duration {
	var bounds []time.Duration
	if ttl != nil {
		bounds = append(bounds, time.Duration(*ttl*float64(time.Second)))
	}
	for _, directive := range strings.Split(strings.ToLower(cacheControl), ",") {
		directive = strings.TrimSpace(directive)
		if directive == "no-store" || directive == "no-cache" {
			return 0
		}
		if strings.HasPrefix(directive, "max-age=") {
			seconds, _ := strconv.Atoi(directive[len("max-age="):])
			bounds = append(bounds, time.Duration(seconds)*time.Second)
		}
	}
	if exp != nil {
		bounds = append(bounds, time.Until(exp.Time()))
	}
	if len(bounds) == 0 {
		return 0
	}
	least := bounds[0]
	for _, b := range bounds[1:] {
		if b < least {
			least = b
		}
	}
	if least < 0 {
		return 0
	}
	return least
}

func (s *service) fetchList(uri string) (*statusList, error) {
	req, _ := http.NewRequest(http.MethodGet, uri, nil)
	req.Header.Set("Accept", "application/statuslist+jwt")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBytes))
	if err != nil {
		return nil, err
	}
	var registered jwt.Claims
	var claims listClaims
	if err := s.verified(strings.TrimSpace(string(body)), "statuslist+jwt", &registered, &claims); err != nil {
		return nil, err
	}
	expected := jwt.Expected{Subject: uri, Time: time.Now()}
	if err := registered.ValidateWithLeeway(expected, leeway); err != nil || registered.IssuedAt == nil {
		return nil, fmt.Errorf("claims: %v", err)
	}
	list := claims.StatusList
	if list == nil || (list.Bits != 1 && list.Bits != 2 && list.Bits != 4 && list.Bits != 8) {
		return nil, errors.New("bits or lst missing")
	}
	compressed, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(list.Lst, "="))
	if err != nil {
		return nil, fmt.Errorf("lst: %v", err)
	}
	reader, err := zlib.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, fmt.Errorf("lst: %v", err)
	}
	raw, err := io.ReadAll(io.LimitReader(reader, maxListBytes+1))
	if err != nil || len(raw) > maxListBytes {
		return nil, fmt.Errorf("lst: %v", err)
	}
	fresh := lifetime(claims.TTL, registered.Expiry, resp.Header.Get("Cache-Control"))
	return &statusList{list.Bits, raw, time.Now().Add(fresh)}, nil
}

// lists caches the status lists by uri; one fetch per uri at a time, and an outdated copy is
// never used.
type lists struct {
	mu      sync.Mutex
	entries map[string]*statusList
	locks   map[string]*sync.Mutex
}

func (s *service) freshList(uri string) (*statusList, error) {
	s.lists.mu.Lock()
	lock, ok := s.lists.locks[uri]
	if !ok {
		lock = &sync.Mutex{}
		s.lists.locks[uri] = lock
	}
	s.lists.mu.Unlock()
	lock.Lock() // concurrent requests for one list wait for a single fetch
	defer lock.Unlock()
	s.lists.mu.Lock()
	cached := s.lists.entries[uri]
	s.lists.mu.Unlock()
	if cached != nil && time.Now().Before(cached.freshUntil) {
		return cached, nil
	}
	list, err := s.fetchList(uri)
	if err != nil {
		return nil, err
	}
	s.lists.mu.Lock()
	s.lists.entries[uri] = list
	s.lists.mu.Unlock()
	return list, nil
}

func (s *service) checkStatus(claims *keyClaims) error {
	if claims.Status == nil || claims.Status.StatusList == nil || claims.Status.StatusList.Idx == nil ||
		*claims.Status.StatusList.Idx < 0 {
		return invalid("no-status", "the key names no status list entry")
	}
	ref := claims.Status.StatusList
	// Only the broker's own lists: a key cannot send us fetching elsewhere.
	if !strings.HasPrefix(ref.URI, s.cfg.brokerURL+"/") {
		return invalid("status-uri", "the status list is not the broker's")
	}
	list, err := s.freshList(ref.URI)
	if err != nil {
		var r *refusal
		if errors.As(err, &r) && r.status == http.StatusServiceUnavailable {
			return r
		}
		return unavailable("status-list-unavailable", "status list: %v", err)
	}
	bit := uint64(*ref.Idx) * uint64(list.bits)
	if bit/8 >= uint64(len(list.bytes)) {
		return invalid("status-index", "the status index is outside the list")
	}
	status := (list.bytes[bit/8] >> (bit % 8)) & byte((1<<list.bits)-1)
	if status != 0 {
		return invalid("revoked", "the key has been revoked")
	}
	return nil
}

// ---- 3. the masking API --------------------------------------------------------------------

type maskAnswer struct {
	Records      []json.RawMessage `json:"records"`
	RulesVersion string            `json:"rules_version"`
	Reason       string            `json:"reason"`
	Detail       string            `json:"detail"`
}

func (s *service) masked(record json.RawMessage, scheme, key string, r *http.Request) (*maskAnswer, error) {
	body := map[string]interface{}{
		"key":     key,
		"records": []json.RawMessage{record},
		"paths":   s.cfg.data.Paths,
		"default": s.cfg.data.Default,
	}
	if scheme == "DPoP" {
		base := s.cfg.publicURL
		if base == "" {
			base = "http://" + r.Host
		}
		body["dpop"] = map[string]string{
			"proof": r.Header.Get("DPoP"), "method": r.Method, "url": strings.TrimRight(base, "/") + r.URL.Path,
		}
	}
	encoded, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, s.cfg.brokerURL+"/v1/mask", bytes.NewReader(encoded))
	req.SetBasicAuth(url.QueryEscape(s.cfg.serviceID), url.QueryEscape(s.cfg.serviceSecret))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, &refusal{http.StatusBadGateway, "temporarily_unavailable", "broker-unavailable", "mask: " + err.Error()}
	}
	defer resp.Body.Close()
	var answer maskAnswer
	_ = json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&answer)
	switch {
	case resp.StatusCode == http.StatusForbidden:
		// The broker's own check (revocation, max_uses, DPoP proof...) refused the key.
		why := answer.Reason
		if why == "" {
			why = answer.Detail
		}
		return nil, invalid("not-active", "the broker refused the key: %s", why)
	case resp.StatusCode != http.StatusOK || len(answer.Records) != 1:
		return nil, &refusal{http.StatusBadGateway, "temporarily_unavailable", "broker-error", fmt.Sprintf("mask: HTTP %d", resp.StatusCode)}
	}
	return &answer, nil
}

// ---- the service ---------------------------------------------------------------------------

type service struct {
	cfg   config
	keys  *keySet
	lists lists
}

func send(w http.ResponseWriter, status int, body interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func (s *service) record(w http.ResponseWriter, r *http.Request) {
	scheme := "Bearer"
	answer, jti, err := func() (*maskAnswer, string, error) {
		parts := strings.SplitN(r.Header.Get("Authorization"), " ", 2)
		if len(parts) != 2 || strings.TrimSpace(parts[1]) == "" ||
			(!strings.EqualFold(parts[0], "Bearer") && !strings.EqualFold(parts[0], "DPoP")) {
			return nil, "", &refusal{http.StatusUnauthorized, "invalid_request", "missing", "present a key as Bearer or DPoP"}
		}
		if strings.EqualFold(parts[0], "DPoP") {
			scheme = "DPoP"
		}
		key := strings.TrimSpace(parts[1])
		registered, claims, err := s.verifyKey(key)
		if err != nil {
			return nil, "", err
		}
		bound := claims.Cnf != nil && claims.Cnf.Jkt != ""
		if bound && (scheme != "DPoP" || r.Header.Get("DPoP") == "") {
			return nil, "", invalid("dpop-required", "the key is DPoP-bound: present it with the DPoP scheme and a proof")
		}
		if !bound && scheme == "DPoP" {
			return nil, "", invalid("not-bound", "the key is not DPoP-bound")
		}
		if err := s.checkStatus(claims); err != nil {
			return nil, "", err
		}
		record, ok := s.cfg.data.Records[strings.TrimPrefix(r.URL.Path, "/records/")]
		if !ok {
			return nil, registered.ID, &refusal{http.StatusNotFound, "not_found", "no-record", "no such record"}
		}
		answer, err := s.masked(record, scheme, key, r)
		return answer, registered.ID, err
	}()
	if err != nil {
		var refused *refusal
		if !errors.As(err, &refused) {
			refused = &refusal{http.StatusInternalServerError, "server_error", "internal", err.Error()}
		}
		logRequest(r, refused.status, refused.reason, jti)
		if refused.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`%s error="%s", error_description="%s"`, scheme, refused.code, refused.reason))
		}
		send(w, refused.status, map[string]string{
			"error": refused.code, "reason": refused.reason, "error_description": refused.description,
		})
		return
	}
	logRequest(r, http.StatusOK, "masked", jti)
	w.Header().Set("X-Masking-Rules-Version", answer.RulesVersion)
	send(w, http.StatusOK, answer.Records[0])
}

// logRequest writes one line per request: never the key, never a value of a record.
func logRequest(r *http.Request, status int, reason, jti string) {
	line, _ := json.Marshal(map[string]interface{}{
		"method": r.Method, "path": r.URL.Path, "status": status, "reason": reason, "jti": jti,
	})
	log.Println(string(line))
}

func getenv(name, fallback string) string {
	if value, ok := os.LookupEnv(name); ok && value != "" {
		return value
	}
	return fallback
}

func main() {
	log.SetFlags(0)
	here, _ := os.Getwd()
	cfg := config{
		brokerURL:     strings.TrimRight(getenv("BROKER_URL", "http://127.0.0.1:8080"), "/"),
		serviceID:     getenv("SERVICE_ID", "customers-db"),
		serviceSecret: os.Getenv("SERVICE_SECRET"),
		publicURL:     os.Getenv("PUBLIC_URL"),
	}
	cfg.jwksURL = getenv("JWKS_URL", cfg.brokerURL+"/.well-known/jwks.json")
	for _, alg := range strings.Split(getenv("ALGORITHMS", "EdDSA,ES256,RS256"), ",") {
		cfg.algorithms = append(cfg.algorithms, strings.TrimSpace(alg))
	}
	raw, err := os.ReadFile(getenv("DATA_FILE", filepath.Join(here, "..", "records.json")))
	if err != nil {
		log.Fatalf("data file: %v", err)
	}
	if err := json.Unmarshal(raw, &cfg.data); err != nil {
		log.Fatalf("data file: %v", err)
	}
	if cfg.data.Default == "" {
		cfg.data.Default = "mask"
	}
	s := &service{
		cfg:   cfg,
		keys:  &keySet{url: cfg.jwksURL},
		lists: lists{entries: map[string]*statusList{}, locks: map[string]*sync.Mutex{}},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		send(w, http.StatusOK, map[string]bool{"ok": true})
	})
	mux.HandleFunc("/records/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			send(w, http.StatusMethodNotAllowed, map[string]string{"error": "method_not_allowed"})
			return
		}
		s.record(w, r)
	})
	host := getenv("HOST", "127.0.0.1")
	listener, err := net.Listen("tcp", net.JoinHostPort(host, getenv("PORT", "8080")))
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	// One line on stdout says where we listen (PORT=0 picks a free port).
	ready, _ := json.Marshal(map[string]string{
		"listening": fmt.Sprintf("http://%s", listener.Addr().String()),
	})
	fmt.Println(string(ready))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		_ = server.Close()
	}()
	if err := server.Serve(listener); err != nil && err != http.ErrServerClosed {
		log.Fatalf("serve: %v", err)
	}
}
