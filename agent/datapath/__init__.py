"""BPF programs (BCC) and their attachments and maps. The only place that imports bcc."""
