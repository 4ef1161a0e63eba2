// One round of SFTP with Go's github.com/pkg/sftp over golang.org/x/crypto/ssh,
// the stack of rclone, restic and many Go tools.  See tests/test_clients.py.
//
// Usage: sftp_round HOST PORT USER KEY_FILE ORIGINAL COPY
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sftp_round:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("want HOST PORT USER KEY_FILE ORIGINAL COPY")
	}
	host, port, user, keyFile, original, copyPath := args[0], args[1], args[2], args[3], args[4], args[5]

	pem, err := os.ReadFile(keyFile)
	if err != nil {
		return err
	}
	signer, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		return err
	}
	config := &ssh.ClientConfig{
		User: user,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		// The test's own server on loopback, started a moment ago.
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
	}
	conn, err := ssh.Dial("tcp", net.JoinHostPort(host, port), config)
	if err != nil {
		return err
	}
	defer conn.Close()
	client, err := sftp.NewClient(conn)
	if err != nil {
		return err
	}
	defer client.Close()

	data, err := os.ReadFile(original)
	if err != nil {
		return err
	}
	if err := client.Mkdir("inbox"); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	if err := upload(client, "inbox/upload.bin", data); err != nil {
		return err
	}
	entries, err := client.ReadDir("inbox")
	if err != nil {
		return fmt.Errorf("readdir: %w", err)
	}
	if len(entries) != 1 || entries[0].Name() != "upload.bin" || entries[0].Size() != int64(len(data)) {
		return fmt.Errorf("listing shows %v", entries)
	}
	if err := client.Rename("inbox/upload.bin", "inbox/kept.bin"); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	// pkg/sftp sends the target first, as OpenSSH does.
	if err := client.Symlink("kept.bin", "inbox/link.bin"); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if target, err := client.ReadLink("inbox/link.bin"); err != nil || target != "kept.bin" {
		return fmt.Errorf("readlink gave %q, %v", target, err)
	}
	if err := client.Remove("inbox/link.bin"); err != nil {
		return fmt.Errorf("remove link: %w", err)
	}
	back, err := download(client, "inbox/kept.bin")
	if err != nil {
		return err
	}
	if !bytes.Equal(back, data) {
		return fmt.Errorf("downloaded %d bytes that differ from the %d uploaded", len(back), len(data))
	}
	if err := os.WriteFile(copyPath, back, 0o600); err != nil {
		return err
	}
	if err := upload(client, "inbox/gone.bin", []byte("short-lived")); err != nil {
		return err
	}
	if err := client.Remove("inbox/gone.bin"); err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	return nil
}

func upload(client *sftp.Client, path string, data []byte) error {
	file, err := client.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := file.Write(data); err != nil {
		file.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return file.Close()
}

func download(client *sftp.Client, path string) ([]byte, error) {
	file, err := client.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer file.Close()
	return io.ReadAll(file)
}
