"""The apk family: Alpine, Wolfi and Chainguard (apk-tools v2 formats).

``version`` orders versions as apk-tools does; ``deps`` parses dependency
expressions; ``installed`` reads and writes the database in ``/lib/apk/db``
(``installed``, ``scripts.tar``, ``triggers``) and ``world``; ``checksum`` the
``Q1`` checksums; ``sign`` the RSA signatures of indexes and packages;
``index`` the verified ``APKINDEX.tar.gz``; ``package`` the verified ``.apk``;
``resolve`` the dependency closure; ``apply`` turns updates into layer entries;
``repo`` reads ``/etc/apk/repositories`` and fetches through the shared cache.
The v3 (ADB) formats are recognised and refused with a clear message.
"""
