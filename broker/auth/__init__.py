"""Who is asking: broker session tokens, browser-direct IdP identities, invoice
ownership, and revocations."""
