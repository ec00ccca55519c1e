using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Scheduler.Tests.IO;

/// <summary>Certificates for the TLS tests over connections.</summary>
internal static class TestCertificates
{
    /// <summary>A self-signed server certificate for "localhost", valid from yesterday to tomorrow.</summary>
    public static X509Certificate2 CreateSelfSignedServer()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        request.CertificateExtensions.Add(names.Build());
        using X509Certificate2 created = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));

        // A PFX round trip gives the certificate a key that SslStream can use on every platform.
        return X509CertificateLoader.LoadPkcs12(created.Export(X509ContentType.Pkcs12), password: null);
    }
}
