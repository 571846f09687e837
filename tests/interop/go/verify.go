// Command verify checks a broker key (a JWT access token) with go-jose, an independent JOSE
// library, the way a Go resource server would: the broker's JWKS from its jwks_uri, the
// header's alg among the allowed ones, a kid that names a published key of that alg, typ
// at+jwt (RFC 9068 §2.1), the signature, then iss, aud and exp (RFC 9068 §4).
//
// Usage: verify JWKS_URL TOKEN ISSUER AUDIENCE ALG[,ALG...]
//
// It prints one JSON object, {"alg", "kid", "typ", "claims"} on success and exit code 0, or
// {"error": "..."} and exit code 1; the token itself is never printed.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	jose "gopkg.in/square/go-jose.v2"
	"gopkg.in/square/go-jose.v2/jwt"
)

func fail(format string, args ...interface{}) {
	out, _ := json.Marshal(map[string]string{"error": fmt.Sprintf(format, args...)})
	fmt.Println(string(out))
	os.Exit(1)
}

func fetchKeys(url string) jose.JSONWebKeySet {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fail("jwks fetch: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fail("jwks fetch: HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		fail("jwks read: %v", err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		fail("jwks parse: %v", err)
	}
	return set
}

func main() {
	if len(os.Args) != 6 {
		fail("usage: verify JWKS_URL TOKEN ISSUER AUDIENCE ALG[,ALG...]")
	}
	jwksURL, token, issuer, audience := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	allowed := strings.Split(os.Args[5], ",")

	parsed, err := jwt.ParseSigned(token)
	if err != nil {
		fail("parse: %v", err)
	}
	if len(parsed.Headers) != 1 {
		fail("expected one signature, got %d", len(parsed.Headers))
	}
	header := parsed.Headers[0]
	algAllowed := false
	for _, alg := range allowed {
		if header.Algorithm == alg {
			algAllowed = true
		}
	}
	if !algAllowed {
		fail("alg %q is not among %v", header.Algorithm, allowed)
	}
	typ, _ := header.ExtraHeaders[jose.HeaderType].(string)
	if !strings.EqualFold(typ, "at+jwt") && !strings.EqualFold(typ, "application/at+jwt") {
		fail("typ %q is not at+jwt", typ)
	}
	if header.KeyID == "" {
		fail("the token names no kid")
	}
	set := fetchKeys(jwksURL)
	keys := set.Key(header.KeyID)
	if len(keys) != 1 {
		fail("kid %q names %d published keys", header.KeyID, len(keys))
	}
	key := keys[0]
	if key.Algorithm != "" && key.Algorithm != header.Algorithm {
		fail("the key's alg %q differs from the token's %q", key.Algorithm, header.Algorithm)
	}

	var registered jwt.Claims
	all := map[string]interface{}{}
	if err := parsed.Claims(key.Key, &registered, &all); err != nil {
		fail("signature: %v", err)
	}
	if registered.Expiry == nil {
		fail("the token has no exp")
	}
	expected := jwt.Expected{Issuer: issuer, Audience: jwt.Audience{audience}, Time: time.Now()}
	if err := registered.ValidateWithLeeway(expected, 0); err != nil {
		fail("claims: %v", err)
	}
	out, err := json.Marshal(map[string]interface{}{
		"alg":    header.Algorithm,
		"kid":    header.KeyID,
		"typ":    typ,
		"claims": all,
	})
	if err != nil {
		fail("output: %v", err)
	}
	fmt.Println(string(out))
}
