"""The client-facing side: transports, auth, policy, approvals, credentials, audit, dispatch pipeline."""
