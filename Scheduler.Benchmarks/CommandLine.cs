using System.Globalization;

namespace Scheduler.Benchmarks;

/// <summary>
/// Option values for the commands (<c>compare</c>, <c>echo-bench</c>, <c>echo-server</c>). Every malformed value is a
/// <see cref="CommandLineException"/> (an <see cref="ArgumentException"/>) that names the option, the value and what was expected, followed by the command's
/// usage; the commands print it and exit with code 2 instead of a stack trace.
/// </summary>
internal static class CommandLine
{
    /// <summary>
    /// Runs <paramref name="parse"/>; on a malformed command line prints <c>{command}: {reason}</c> and the usage to
    /// stderr and returns null (the command then exits with code 2).
    /// </summary>
    public static T? ParseOrReport<T>(string command, Func<T> parse)
        where T : class
    {
        try
        {
            return parse();
        }
        catch (CommandLineException e)
        {
            Console.Error.WriteLine($"{command}: {e.Message}");
            return null;
        }
    }

    /// <summary>The value after option <c>args[i]</c>; advances <paramref name="i"/> past it.</summary>
    public static string Value(IReadOnlyList<string> args, ref int i, string usage)
    {
        if (i + 1 >= args.Count || args[i + 1].StartsWith("--", StringComparison.Ordinal))
        {
            throw new CommandLineException($"{args[i]} needs a value.\n{usage}");
        }

        return args[++i];
    }

    /// <summary><paramref name="text"/> as an integer of at least <paramref name="min"/>.</summary>
    public static int Int(string option, string text, int min, string usage) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value >= min
            ? value
            : throw new CommandLineException($"{option} takes an integer of at least {min}, not '{text}'.\n{usage}");

    /// <summary><paramref name="text"/>, comma-separated, as integers of at least <paramref name="min"/> (one or more).</summary>
    public static int[] Ints(string option, string text, int min, string usage)
    {
        string[] parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return parts.Length == 0
            ? throw new CommandLineException($"{option} needs at least one value.\n{usage}")
            : [.. parts.Select(part => Int(option, part, min, usage))];
    }

    /// <summary><paramref name="text"/> as a positive, finite number.</summary>
    public static double PositiveNumber(string option, string text, string usage) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) && value > 0 && double.IsFinite(value)
            ? value
            : throw new CommandLineException($"{option} takes a positive number, not '{text}'.\n{usage}");

    /// <summary><paramref name="text"/> as a named member of <typeparamref name="TEnum"/> (case-insensitive; numbers are refused).</summary>
    public static TEnum Name<TEnum>(string option, string text, string usage)
        where TEnum : struct, Enum
    {
        string[] names = Enum.GetNames<TEnum>();
        string? match = names.FirstOrDefault(name => string.Equals(name, text.Trim(), StringComparison.OrdinalIgnoreCase));
        return match is not null
            ? Enum.Parse<TEnum>(match)
            : throw new CommandLineException($"{option}: unknown value '{text}'. Known: {string.Join(", ", names.Select(n => n.ToLowerInvariant()))}.\n{usage}");
    }

    /// <summary><paramref name="text"/>, comma-separated, as named members of <typeparamref name="TEnum"/> (one or more).</summary>
    public static TEnum[] Names<TEnum>(string option, string text, string usage)
        where TEnum : struct, Enum
    {
        string[] parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return parts.Length == 0
            ? throw new CommandLineException($"{option} needs at least one value.\n{usage}")
            : [.. parts.Select(part => Name<TEnum>(option, part, usage))];
    }
}

/// <summary>A malformed command line. Its message is for the user as it stands (no parameter name appended).</summary>
internal sealed class CommandLineException(string message) : ArgumentException(message);
