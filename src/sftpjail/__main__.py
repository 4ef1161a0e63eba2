from sftpjail.cli import main

main()
