// One round of SFTP with JSch, the SSH library many Java tools embed
// (Jenkins plugins, Ant, Spring Integration).  See tests/test_clients.py.
//
// Usage: java -cp jsch.jar:. SftpRound HOST PORT USER PASSWORD ORIGINAL COPY

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Properties;
import java.util.Vector;

public class SftpRound {
    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        String user = args[2];
        String password = args[3];
        byte[] data = Files.readAllBytes(Paths.get(args[4]));

        Session session = new JSch().getSession(user, host, port);
        session.setPassword(password);
        Properties config = new Properties();
        // The test's own server on loopback, started a moment ago.
        config.put("StrictHostKeyChecking", "no");
        session.setConfig(config);
        session.connect(30000);
        try {
            ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
            sftp.connect(30000);
            round(sftp, data, args[5]);
            sftp.disconnect();
        } finally {
            session.disconnect();
        }
    }

    static void round(ChannelSftp sftp, byte[] data, String copyPath) throws Exception {
        sftp.mkdir("inbox");
        sftp.put(new ByteArrayInputStream(data), "inbox/upload.bin");

        Vector<?> entries = sftp.ls("inbox");
        boolean listed = false;
        for (Object item : entries) {
            ChannelSftp.LsEntry entry = (ChannelSftp.LsEntry) item;
            if (entry.getFilename().equals("upload.bin")) {
                listed = entry.getAttrs().getSize() == data.length;
            }
        }
        if (!listed) {
            throw new Exception("upload.bin is not listed with its size: " + entries);
        }

        sftp.rename("inbox/upload.bin", "inbox/kept.bin");
        // JSch sends the target first, and wants it to exist as given.
        sftp.symlink("inbox/kept.bin", "inbox/link.bin");
        String target = sftp.readlink("inbox/link.bin");
        if (!target.equals("inbox/kept.bin")) {
            throw new Exception("the link points at " + target);
        }
        sftp.rm("inbox/link.bin");
        ByteArrayOutputStream back = new ByteArrayOutputStream();
        sftp.get("inbox/kept.bin", back);
        if (!Arrays.equals(back.toByteArray(), data)) {
            throw new Exception("downloaded bytes differ from the uploaded ones");
        }
        Files.write(Paths.get(copyPath), back.toByteArray());

        sftp.put(new ByteArrayInputStream("short-lived".getBytes()), "inbox/gone.bin");
        sftp.rm("inbox/gone.bin");
    }
}
