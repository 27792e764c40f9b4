"""The dynamic providers, the HTTP clients and the CLI commands that call them, against the Fly and
Cloudflare emulators."""
