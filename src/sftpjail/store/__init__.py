"""Where users and defence state live: a users file, or PostgreSQL.

`base` names what every store offers; `postgres` holds the connections,
`postgres_users` and `postgres_bans` the two PostgreSQL stores, `schema`
the numbered migrations that `sftpjail db init|migrate` applies.
"""
