"""The session domain: records, and creating, reading, changing and deleting sessions."""
