"""Single sign-on: people from the company's OpenID Provider (the console's authorization
code flow with PKCE, ``broker login``'s device or loopback flow) and machine operators
exchanging their pipeline's workload JWT for a short-lived operator token."""
