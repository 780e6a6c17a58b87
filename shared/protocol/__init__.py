"""The wire protocol between the SDK and the server: record names, versions and validation of
uploads and verdicts (:mod:`.upload`), and local screening's messages (:mod:`.local`)."""
